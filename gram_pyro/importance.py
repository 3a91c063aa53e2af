"""Importance weights, as SMC, likelihood estimation and the guide fit use them: ``log_w``
``[K, B]``, K particles (dim 0) for each of B examples or inputs.
"""

from __future__ import annotations

import math

import torch

from gram_pyro.elbo import guided_traces

TRAJECTORIES_PER_PASS = 512  # particles x examples per batched pass (larger ones thrash CPU memory)


def site_log_prob_sum(trace, batch_shape) -> torch.Tensor:
    """The sum of every sample site's log-density in ``trace`` (after ``compute_log_prob``), each
    broadcast to ``batch_shape``: ``log p(y, eps | x)`` of a model trace, ``log q(eps | x, y)`` of
    a guide trace."""
    return sum(site["log_prob"].expand(batch_shape) for site in trace.nodes.values()
               if site["type"] == "sample")


def site_log_ratios(model_trace, guide_trace, batch_shape) -> dict:
    """Each sample site's share of ``log w``, by name, each broadcast to ``batch_shape``:
    ``log p - log q`` of a latent site, ``log p`` of an observed one (the traces' log-densities
    computed). They sum to :func:`weighted_traces`' ``log_w``."""
    out = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        ratio = site["log_prob"].expand(batch_shape)
        if not site["is_observed"]:
            ratio = ratio - guide_trace.nodes[name]["log_prob"].expand(batch_shape)
        out[name] = ratio
    return out


def weighted_traces(model, guide, x, y, num_particles: int, **kwargs):
    """``(log_w, model_trace, guide_trace)`` of K = ``num_particles`` guide particles for each
    example, the particles on the programs' ``trajectories`` plate: ``log_w`` ``[K, B]`` is
    ``log p(y, eps_k | x) - log q(eps_k | x, y)`` (the traces' log-densities are computed).
    ``kwargs`` go to model and guide alike (e.g. a shared recursion)."""
    model_trace, guide_trace = guided_traces(model, guide, x, y, num_samples=num_particles, **kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    shape = (num_particles, x.shape[0])
    log_w = site_log_prob_sum(model_trace, shape) - site_log_prob_sum(guide_trace, shape)
    return log_w, model_trace, guide_trace


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
