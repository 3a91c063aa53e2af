"""The amortized posterior q(eps | x, y) of GRAM (DESIGN §1, §5).

The guide runs the same deterministic recursion as the model and differs only in the noise:
``eps_{n}_{t} ~ N(mu_q(u_t, y), sigma_q(u_t, y)^2)``, where y enters through a learned target
embedding added to u_t at the answer positions. It computes each u_t once and leaves it in the
:class:`~gram_pyro.recursion.SharedRecursion` it shares with the model, which reuses it on replay.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist

from gram_pyro.recursion import grad_enabled
from models.gram import RecursionProgram, plates


class GramGuide(RecursionProgram):
    """Callable Pyro guide with the model's signature (see :class:`models.gram.GramModel`).

    A transition whose rule has ``posterior=False`` is drawn from the prior instead (q = p, so
    its KL is zero): the ``prior_prefix`` objective.
    """

    def __call__(self, x, y=None, *, steps=None, state=None, shared=None, rules=None,
                 num_samples=None, lprm_guidance=False, lprm_prev=None, heads=True,
                 temperature=1.0):
        if y is None:
            raise ValueError("the guide conditions on the answer y; it cannot run without it")
        net = self.net
        steps, rules, shared, e_x, h, l = self.start(x, steps, state, shared, rules, num_samples)
        origin = h
        with plates(x.shape[0], num_samples):
            for n in pyro.markov(steps):
                for t in pyro.markov(range(self.t_high)):
                    rule = rules[t]
                    site = f"eps_{n}_{t}"
                    l, u = shared.propose(net, site, origin, h, l, e_x, self.k_low, rule.trunk_grad)
                    if self.deterministic:
                        h = origin = u
                        continue
                    if rule.posterior:
                        with grad_enabled(rule.head_grad or rule.trunk_grad):
                            loc, scale = net.posterior(u, y)
                    else:
                        with grad_enabled(False):
                            loc, scale = net.prior(u)
                    eps = pyro.sample(site, dist.Normal(loc, scale).to_event(2),
                                      infer={"kl": rule.kl})
                    h = u + (eps if rule.trunk_grad else eps.detach())
                    origin = eps
        return h, l
