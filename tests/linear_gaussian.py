"""A linear-Gaussian instance of GRAM's trajectory model, where log p(y | x) is exact.

Same shape of program as :mod:`gram_pyro.models.gram` (a ``batch`` plate, an optional ``trajectories``
plate, one site ``eps_{n}_{t}`` per transition t of supervision step n, the observation at the
end of every call, ``steps`` / ``state`` to run some supervision steps from a carried state
``(h, l)``, the state returned as ``.h`` / ``.l``), with every piece linear::

    h_0 = x,   u_t = A h_{t-1},   eps_t ~ N(0, s^2 I),   h_t = u_t + eps_t,   y ~ N(C h_T, r^2 I)

so h_T is Gaussian and a Kalman filter gives ``log p(y | x)`` in closed form
(:meth:`LinearGaussian.exact_log_likelihood`). :meth:`LinearGaussian.guide` is a deliberately
imperfect Gaussian proposal ``q(eps_t | u_t, y) = N(G (y - C u_t), g^2 I)``, so the importance
weights vary and the estimators have something to prove. Used by the likelihood tests.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import torch

from gram_pyro.models.gram import plates


class LinearGaussian:
    def __init__(self, dim: int = 3, obs_dim: int = 2, steps: int = 3, seed: int = 0,
                 noise: float = 0.7, obs_noise: float = 0.5, guide_gain: float = 0.3,
                 guide_scale: float = 0.6, n_supervision: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.A = 0.9 * torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
        self.C = torch.randn(obs_dim, dim, generator=g) / math.sqrt(dim)
        self.G = guide_gain * self.C.T
        self.s, self.r, self.g = noise, obs_noise, guide_scale
        self.steps, self.n_supervision = steps, n_supervision

    def _run(self, x, noise, steps, state, num_samples):
        h = state[0] if state is not None else \
            (x if num_samples is None else x.expand(num_samples, *x.shape))
        for n in pyro.markov(range(self.n_supervision) if steps is None else steps):
            for t in pyro.markov(range(self.steps)):
                u = h @ self.A.T
                h = u + pyro.sample(f"eps_{n}_{t}", noise(u))
        return h

    def model(self, x, y=None, num_samples=None, steps=None, state=None):
        with plates(x.shape[0], num_samples):
            h = self._run(x, lambda u: dist.Normal(torch.zeros_like(u), self.s).to_event(1),
                          steps, state, num_samples)
            pyro.sample("y", dist.Normal(h @ self.C.T, self.r).to_event(1), obs=y)
        return SimpleNamespace(h=h, l=None)

    def guide(self, x, y, num_samples=None, steps=None, state=None):
        with plates(x.shape[0], num_samples):
            h = self._run(x, lambda u: dist.Normal((y - u @ self.C.T) @ self.G.T, self.g).to_event(1),
                          steps, state, num_samples)
        return SimpleNamespace(h=h, l=None)

    def exact_log_likelihood(self, x, y) -> torch.Tensor:
        """Kalman prediction without updates: h_T ~ N(A^T x, P_T), y ~ N(C A^T x, C P_T C' + r^2 I)."""
        dim = self.A.shape[0]
        mean, cov = x, torch.zeros(dim, dim)
        for _ in range(self.steps * self.n_supervision):
            mean = mean @ self.A.T
            cov = self.A @ cov @ self.A.T + self.s ** 2 * torch.eye(dim)
        y_cov = self.C @ cov @ self.C.T + self.r ** 2 * torch.eye(self.C.shape[0])
        return dist.MultivariateNormal(mean @ self.C.T, covariance_matrix=y_cov).log_prob(y)
