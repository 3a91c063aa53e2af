"""Importance weights, as SMC and likelihood estimation both use them: ``log_w`` ``[K, B]``, K
particles (dim 0) for each of B examples or inputs.
"""

from __future__ import annotations

import math

import torch


def normalized(log_w: torch.Tensor) -> torch.Tensor:
    """The self-normalized weights of each column."""
    return torch.softmax(log_w, dim=0)


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``1 / sum_k w_k^2`` of each column's normalized weights, ``[B]``."""
    return 1.0 / (normalized(log_w) ** 2).sum(0)


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k exp(log_w_k)`` of each column: IWAE_K when the weights are p / q."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


KHAT_RELIABLE = 0.7  # above it the importance-sampling estimate is not to be trusted (PSIS)
KHAT_MIN_PARTICLES = 50  # fewer particles leave too few tail weights to fit


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    """The Pareto k-hat of each column's importance weights, ``[B]`` (NaN below
    ``KHAT_MIN_PARTICLES`` particles).

    The computation of :func:`pyro.infer.importance.psis_diagnostic`, on weights already in
    hand: the largest ``min(0.2 K, 3 sqrt K)`` weights above the cutoff are fitted with a
    generalized Pareto distribution (:func:`pyro.ops.stats.fit_generalized_pareto`) and k is its
    shape. k < 0.5: the estimate converges fast; 0.5-0.7: slowly; above ``KHAT_RELIABLE``
    (0.7) the IS estimate is unreliable at any practical K (Vehtari et al., PSIS)."""
    from pyro.ops.stats import fit_generalized_pareto

    k_particles = log_w.shape[0]
    out = torch.full((log_w.shape[1],), float("nan"), dtype=torch.float64, device=log_w.device)
    if k_particles < KHAT_MIN_PARTICLES:
        return out
    tail_size = int(math.ceil(min(0.2 * k_particles, 3.0 * math.sqrt(k_particles))))
    for b in range(log_w.shape[1]):
        lw = torch.sort(log_w[:, b].double() - log_w[:, b].max())[0]
        cutoff = max(math.log(1e-15), float(lw[-tail_size - 1]))
        tail = lw[lw > cutoff]
        if len(tail) >= 10:
            out[b] = fit_generalized_pareto(tail.exp() - math.exp(cutoff))[0]
        else:  # the weights below the top ones are negligible: one weight dominates
            out[b] = float("inf")
    return out
