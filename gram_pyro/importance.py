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
