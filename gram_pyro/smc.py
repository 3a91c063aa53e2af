"""LPRM-guided sequential Monte Carlo over supervision steps (beyond the paper).

The target is the prior over trajectories tilted by the LPRM's final value,
``pi(z) ∝ p(z | x) v(z_N)``. Written as a product of per-step factors it telescopes:
``v(z_N) = v(z_1) * prod_{n>1} v(z_n) / v(z_{n-1})``, so after each supervision step a particle's
weight is multiplied by ``v_n / v_{n-1}``: the model's ``pyro.factor("lprm_{n}", ...)`` site.
The prior is the proposal, so that factor *is* the incremental importance weight. When the
effective sample size of an input's N particles drops below ``ess_threshold * N`` they are
resampled (systematic resampling, per input) and their weights reset. Compute then goes to
trajectories the LPRM rates as going well; the cost per step equals N independent trajectories.

The final answer is the particle with the highest LPRM value (the same rule as best-of-N, so
the two compare at equal compute).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from gram_pyro.importance import ess, normalized


def systematic_resample(log_w: torch.Tensor) -> torch.Tensor:
    """Ancestor indices ``[N, B]`` for log weights ``[N, B]`` (particles on dim 0, per column):
    one uniform per column, shifted by k / N for the k-th draw."""
    n, device = log_w.shape[0], log_w.device
    cdf = torch.cumsum(normalized(log_w), dim=0)
    cdf[-1] = 1.0
    u = (torch.rand(1, log_w.shape[1], device=device)
         + torch.arange(n, device=device)[:, None]) / n
    return torch.searchsorted(cdf.T.contiguous(), u.T.contiguous()).T.clamp_max(n - 1)


@dataclass
class SMCResult:
    answers: np.ndarray  # [M, N, A] final particles
    values: np.ndarray  # [M, N] final LPRM values
    log_weights: np.ndarray  # [M, N] final log weights
    resampled: int  # number of (input, step) resampling events
    steps: int


@torch.no_grad()
def lprm_smc(model, x, num_particles: int, *, max_steps: int | None = None,
             ess_threshold: float = 0.5, chunk_size: int = 512) -> SMCResult:
    """Run LPRM-guided SMC for every input row of ``x`` ``[M, L]``.

    Inputs never share particles, so they run ``max(1, chunk_size // num_particles)`` at a time
    (the same passes as :func:`gram_pyro.inference.prior_rollouts`, so the two compare at equal
    compute); the result is the same as one pass over all inputs, in distribution.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.long, device=model.device)
    per = max(1, chunk_size // num_particles)
    if len(x) > per:
        parts = [lprm_smc(model, x[i:i + per], num_particles, max_steps=max_steps,
                          ess_threshold=ess_threshold, chunk_size=chunk_size)
                 for i in range(0, len(x), per)]
        return SMCResult(answers=np.concatenate([p.answers for p in parts]),
                         values=np.concatenate([p.values for p in parts]),
                         log_weights=np.concatenate([p.log_weights for p in parts]),
                         resampled=sum(p.resampled for p in parts), steps=parts[0].steps)
    max_steps = max_steps or model.n_supervision
    n, m = num_particles, x.shape[0]
    log_w = torch.zeros(n, m, device=x.device)
    state, prev_log_v, resampled = None, None, 0
    for s in range(max_steps):
        trace = poutine.trace(model).get_trace(x, steps=[s], state=state, num_samples=n,
                                               lprm_guidance=True, lprm_prev=prev_log_v)
        out = trace.nodes["_RETURN"]["value"]
        site = trace.nodes[f"lprm_{s}"]
        log_w = log_w + site["fn"].log_prob(site["value"])
        state = (out.h, out.l)
        prev_log_v = out.log_values[-1]
        answers = model.answers(out)  # the last step's; no resampling follows it
        if s < max_steps - 1:
            low = ess(log_w) < ess_threshold * n
            if bool(low.any()):
                idx = systematic_resample(log_w)
                keep = torch.arange(n, device=x.device)[:, None]
                idx = torch.where(low[None, :], idx, keep)  # only the low-ESS inputs resample
                gather = lambda t: torch.gather(  # noqa: E731
                    t, 0, idx.reshape(n, m, *([1] * (t.dim() - 2))).expand_as(t))
                state = (gather(state[0]), gather(state[1]))
                prev_log_v = gather(prev_log_v)
                log_w = torch.where(low[None, :], torch.zeros_like(log_w), log_w)
                resampled += int(low.sum())
    values = prev_log_v.exp()
    return SMCResult(answers=answers.transpose(0, 1).cpu().numpy(),
                     values=values.T.cpu().numpy(), log_weights=log_w.T.cpu().numpy(),
                     resampled=resampled,
                     steps=max_steps)
