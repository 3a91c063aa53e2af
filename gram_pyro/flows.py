"""A per-element flow for the fitted guide's noise: the sinh-arcsinh transform of a Gaussian.

A Gaussian q fitted by the ELBO sits inside the region of noise that decodes to the answer. Where
that region is bounded on one side and open on the other (a decoder's logit crosses zero at a
boundary, and beyond it the prior's own tail goes on), the posterior of an element is skewed,
and a Gaussian narrower than its open tail gives weights ``p / q`` that grow without bound along
it: heavy-tailed importance weights (docs/design.md §6). The sinh-arcsinh transform (Jones and
Pewsey, 2009) bends a standard normal ``z`` per element with a skew ``s`` and a tail weight
``tau > 0``::

    eps = loc + scale * sinh(tau * (asinh(z) + s))

``s = 0, tau = 1`` is the identity (q is the Gaussian again); ``s`` pushes mass to one side and
``tau > 1`` gives both tails polynomial-times-Gaussian weight. The transform is elementwise and
monotone, so its log-determinant is a sum of closed-form terms and the density of any value
(a replayed particle too) is exact: ``z = sinh(asinh((eps - loc) / scale) / tau - s)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform, Transform


def log_cosh(a: torch.Tensor) -> torch.Tensor:
    """``log cosh(a)`` without overflow."""
    a = a.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


class SinhArcsinhTransform(Transform):
    """``z -> sinh(tail * (asinh(z) + skew))``, elementwise; ``tail > 0``."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, skew: torch.Tensor, tail: torch.Tensor, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.skew, self.tail = skew, tail

    def with_cache(self, cache_size=1):
        return self if self._cache_size == cache_size else \
            SinhArcsinhTransform(self.skew, self.tail, cache_size)

    def _call(self, z):
        return torch.sinh(self.tail * (torch.asinh(z) + self.skew))

    def _inverse(self, x):
        return torch.sinh(torch.asinh(x) / self.tail - self.skew)

    def log_abs_det_jacobian(self, z, x):
        return (torch.log(self.tail) + log_cosh(self.tail * (torch.asinh(z) + self.skew))
                - 0.5 * torch.log1p(z * z))


def sinh_arcsinh_normal(loc, scale, skew, tail) -> dist.TransformedDistribution:
    """The distribution of ``loc + scale * sinh(tail * (asinh(z) + skew))``, ``z ~ N(0, 1)``
    per element (batch shape that of ``loc``; no event dims). Reparameterized."""
    base = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale))
    return dist.TransformedDistribution(
        base, [SinhArcsinhTransform(skew, tail), AffineTransform(loc, scale, cache_size=1)])
