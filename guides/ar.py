"""The guide of the autoregressive baseline (:mod:`gram_pyro.models.ar`): empty.

The AR model has no latent variable, so with this guide ``Trace_ELBO``'s loss is exactly
``-log p(y | x)`` and SVI is maximum likelihood (Pyro's MLE pattern: parameters in the model, a
guide that samples nothing)."""

from __future__ import annotations


def ar_guide(x, y=None, **kwargs) -> None:
    """Samples nothing: every site of the AR model is observed in training."""
    return None
