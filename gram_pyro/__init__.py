"""gram-pyro: GRAM (Generative Recursive reAsoning Models) as Pyro programs.

The generative programs live in the top-level package ``models``, the amortized guides in
``guides``; this package holds everything else (tasks, networks, training, inference,
likelihood, metrics, plots, CLI).
"""

__version__ = "0.1.0"
