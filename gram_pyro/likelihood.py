"""Log-likelihood estimates of a trained model: the full ELBO and importance weighting (IWAE).

For one example with trajectory noise eps = (eps_{n,t}) drawn from the guide q(eps | x, y)::

    w_k      = p(y, eps_k | x) / q(eps_k | x, y)                        k = 1..K
    IWAE_K   = log (1/K) sum_k w_k            (a lower bound on log p(y | x), tight as K grows)
    ELBO     = E_q[log p(y | h)] - sum_{n,t} KL(q(eps_nt) || p(eps_nt))      (Eq. 13, all KLs)

E[IWAE_K] is non-decreasing in K and E[IWAE_1] = ELBO. The K particles of every example are the
model's ``trajectories`` plate (dim -2) beside the ``batch`` plate (dim -1), so every site's
log-density has shape ``[K, B]`` and the log-sum-exp runs per example: the per-example form of
Pyro's ``vectorized_importance_weights``. Particles are processed in chunks of about 512
trajectories (the network's memory stays bounded); the K log-weights of every example, ``[K, B]``
floats, are kept and combined by one log-sum-exp, which is safe in float32 at K = 10,000.

With a blank input (the unconditional model) the same estimates are log p(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import torch

from gram_pyro.build import programs, resolve_device, run_data
from gram_pyro.checkpoint import load_run
from gram_pyro.elbo import GramELBO, guided_traces
from gram_pyro.importance import ess, log_mean_exp
from gram_pyro.recursion import SharedRecursion


TRAJECTORIES_PER_PASS = 512


@dataclass
class Estimate:
    """Per-example figures from K particles, each ``[B]`` numpy: ``iwae`` (IWAE_K in nats),
    ``se`` (its Monte Carlo standard error, delta method on the weights), ``ess`` (effective
    sample size of the K weights), ``elbo`` (mean over particles of the analytic-KL ELBO).
    ``log_w`` ``[K, B]`` keeps the weights, from which :meth:`iwae_at` gives IWAE_k for k <= K."""

    iwae: np.ndarray
    se: np.ndarray
    ess: np.ndarray
    elbo: np.ndarray
    log_w: torch.Tensor

    @property
    def particles(self) -> int:
        return self.log_w.shape[0]

    def iwae_at(self, k: int) -> np.ndarray:
        """IWAE_k per example, averaged over the K // k disjoint groups of k particles (an
        unbiased estimate of E[IWAE_k] with less variance than a single group)."""
        groups = self.particles // k
        lw = self.log_w[: groups * k].reshape(groups, k, -1).transpose(0, 1)
        return log_mean_exp(lw).mean(0).cpu().numpy()


def _site_sum(trace, batch_shape) -> torch.Tensor:
    """The sum of every sample site's log-density, each broadcast to ``batch_shape``."""
    return sum(site["log_prob"].expand(batch_shape) for site in trace.nodes.values()
               if site["type"] == "sample")


@torch.no_grad()
def log_weights(model, guide, x, y, num_particles: int, **kwargs):
    """``log w`` ``[K, B]`` of K guide particles for each example, and the matching analytic
    single-particle ELBO ``[K, B]`` (reconstruction minus every transition's KL). ``kwargs``
    go to model and guide alike (e.g. a shared recursion)."""
    model_trace, guide_trace = guided_traces(model, guide, x, y, num_samples=num_particles, **kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    shape = (num_particles, x.shape[0])
    log_w = _site_sum(model_trace, shape) - _site_sum(guide_trace, shape)
    terms = GramELBO(beta=1.0, kl_balance=None).terms(model_trace, guide_trace)
    elbo = (terms["recon"] - terms["kl_total"]).expand(shape)
    return log_w.float(), elbo.float()


def estimate(model, guide, x, y, num_particles: int, chunk: int | None = None,
             make_kwargs=dict) -> Estimate:
    """IWAE_K, its standard error and ESS, and the ELBO, per example of ``x`` ``[B, ...]``.

    Particles go ``chunk`` at a time (default: about 512 trajectories per pass; much larger
    passes thrash memory on CPU); ``make_kwargs()`` gives fresh extra arguments for each chunk's
    model/guide pair (GRAM passes a new :class:`SharedRecursion`)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)  # tensors stay where they are
    chunk = chunk or max(1, TRAJECTORIES_PER_PASS // x.shape[0])
    lws, elbos = [], []
    for done in range(0, num_particles, chunk):
        lw, elbo = log_weights(model, guide, x, y, min(chunk, num_particles - done), **make_kwargs())
        lws.append(lw)
        elbos.append(elbo)
    lw, elbo = torch.cat(lws), torch.cat(elbos)
    K = num_particles
    w = torch.exp(lw - lw.max(0).values).double()  # weights up to a per-example factor
    s1, s2 = w.sum(0), (w ** 2).sum(0)
    # delta method: Var[log mean w] ~ Var[w] / (K mean(w)^2)
    var = (s2 / K - (s1 / K) ** 2).clamp_min(0.0) * K / max(K - 1, 1)
    se = torch.sqrt(var / K) / (s1 / K)
    return Estimate(log_mean_exp(lw).cpu().numpy(), se.cpu().numpy(), ess(lw).cpu().numpy(),
                    elbo.mean(0).cpu().numpy(), lw.cpu())


def run_loglik(run_dir, *, particles: int = 100, split: str = "test", limit: int | None = 50,
               chunk: int | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """``gram loglik``: the full ELBO and IWAE_k (k = 1, 10, 100, 1000 up to ``particles``) of
    a run on the (input, completion) pairs of a split, in nats per example and bits per answer
    token. The LPRM factor is off here (the model runs without ``lprm_guidance``): these bound
    log p(y | x) of the model itself (log p(x) for an unconditional run)."""
    task, cfg, net = load_run(run_dir, device=resolve_device(device))
    x, y = run_data(task, cfg).split(split, nonempty=True).pairs()
    if limit and limit < len(x):
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
        x, y = x[keep], y[keep]
    model, guide = programs(net, cfg)
    pyro.set_rng_seed(seed)
    x, y = (torch.as_tensor(a, device=model.device) for a in (x, y))
    est = estimate(model, guide, x, y, particles, chunk=chunk,
                   make_kwargs=lambda: {"shared": SharedRecursion()})
    n = len(x)
    tokens = task.answer_len
    sem = lambda v: float(np.std(v, ddof=1) / math.sqrt(n)) if n > 1 else None  # noqa: E731
    table = []
    for k in (1, 10, 100, 1000, 10_000):
        if k <= particles:
            v = est.iwae_at(k)
            table.append({"k": k, "iwae_nats": float(v.mean()), "sem": sem(v),
                          "bits_per_token": float(-v.mean() / tokens / math.log(2))})
    return {
        "task": task.name, "unconditional": task.unconditional, "split": split, "examples": n,
        "particles": particles,
        "quantity": "log p(x)" if task.unconditional else "log p(y | x)",
        "model": "deterministic baseline" if cfg.deterministic else "GRAM",
        "elbo_nats": float(est.elbo.mean()), "elbo_sem": sem(est.elbo),
        "iwae_nats": float(est.iwae.mean()), "iwae_sem": sem(est.iwae),
        "iwae_mc_se_mean": float(np.mean(est.se)),
        "ess_mean": float(np.mean(est.ess)),
        "elbo_bits_per_token": float(-est.elbo.mean() / tokens / math.log(2)),
        "iwae_bits_per_token": float(-est.iwae.mean() / tokens / math.log(2)),
        "iwae_by_k": table,
        "lprm_factor": "off (the bounds are on the model without LPRM guidance)",
    }


def _pm(se) -> str:
    """``± se``, or ``± n/a`` for one example (no standard error over examples)."""
    return f"± {se:.3f}" if se is not None else "± n/a"


def format_loglik(r: dict) -> str:
    q = r["quantity"]
    lines = [f"{r['model']} on {r['task']}: {q} on {r['examples']} {r['split']} examples, "
             f"K = {r['particles']} guide particles each",
             f"  ELBO            {r['elbo_nats']:9.3f} {_pm(r['elbo_sem'])} nats/example  "
             f"({r['elbo_bits_per_token']:.4f} bits/token)",
             f"  IWAE_{r['particles']:<9} {r['iwae_nats']:9.3f} {_pm(r['iwae_sem'])} nats/example  "
             f"({r['iwae_bits_per_token']:.4f} bits/token); per-example MC s.e. "
             f"{r['iwae_mc_se_mean']:.3f}, mean ESS {r['ess_mean']:.1f}",
             "  k        IWAE_k (nats)   bits/token"]
    for row in r["iwae_by_k"]:
        lines.append(f"  {row['k']:<8} {row['iwae_nats']:9.3f} {_pm(row['sem'])}  {row['bits_per_token']:.4f}")
    lines.append("  (± is the standard error of the mean over examples; LPRM guidance is "
                 "off, so these bound the model's own likelihood)")
    return "\n".join(lines)
