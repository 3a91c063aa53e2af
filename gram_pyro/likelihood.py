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

Two checks on those numbers. The Pareto k-hat of each example's K weights
(:func:`~gram_pyro.importance.pareto_khat`, PSIS) says whether its IWAE can be trusted (k-hat
above 0.7: not at any practical K). And a second estimator that does not rest on one proposal:
sequential Monte Carlo over the supervision steps (:func:`smc_log_likelihood`), whose particles
are resampled as the trajectory goes, an unbiased estimate of p(y | x) whose log is a
stochastic lower bound like IWAE's. Where the two agree within their errors, and k-hat
is small, the figure is the model's likelihood.

Where k-hat is large, the report also says where: the variance of log w over each example's
particles, split exactly by sample site (:meth:`Estimate.variance_by_site`), names the
transitions at which the guide is furthest from the posterior.

The guide used is the training guide, or the one ``gram fit-guide`` fitted for likelihood
(:mod:`gram_pyro.guide_fit`) when the run has one. When the run also has a defensive guide
(``gram fit-guide --defensive``), IWAE proposes from the mixture ``(1 - a) q_fit + a q_def``,
a = ``defensive_weight`` (0.1 by default; 0 leaves q_def out, 1 proposes from it alone):
each particle is drawn from q_def with probability a, else from q_fit, and weighed against the
mixture's density, which replaying the particle through the other guide gives
(:func:`mixture_weights`). The mixture has no closed-form KL, so its ELBO is the Monte Carlo
mean of log w. SMC proposes from q_fit alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pyro
import torch

from gram_pyro.build import model_label, programs, resolve_device, run_data
from gram_pyro.checkpoint import load_checkpoint, load_run
from gram_pyro.elbo import GramELBO, guided_traces
from gram_pyro.errors import UserError
from gram_pyro.guide_fit import DEFENSIVE_ENTRY, DEFENSIVE_WEIGHT, fit_heldout, fit_method, \
    replayed_log_q, steps_in_all
from gram_pyro.importance import KHAT_MIN_PARTICLES, KHAT_RELIABLE, TRAJECTORIES_PER_PASS, ess, \
    log_mean_exp, pareto_khat, site_log_prob_sum, site_log_ratios, weighted_traces
from gram_pyro.recursion import SharedRecursion
from gram_pyro.smc import systematic_resample


KHAT_CAP = 10.0  # k-hat is reported at most this (it is inf when a single weight dominates)
SITES_SHOWN = 4  # sites named in the printed split of the log-weight variance


@dataclass
class Estimate:
    """Per-example figures from K particles, each ``[B]`` numpy: ``iwae`` (IWAE_K in nats),
    ``se`` (its Monte Carlo standard error, delta method on the weights), ``ess`` (effective
    sample size of the K weights), ``elbo`` (mean over particles of the analytic-KL ELBO).
    ``log_w`` ``[K, B]`` keeps the weights, from which :meth:`iwae_at` gives IWAE_k for k <= K;
    ``khat`` is their Pareto k-hat (NaN below 50 particles). ``site_log_w`` {site: ``[K, B]``}
    splits every log-weight by sample site (:func:`~gram_pyro.importance.site_log_ratios`), for
    :meth:`variance_by_site`."""

    iwae: np.ndarray
    se: np.ndarray
    ess: np.ndarray
    elbo: np.ndarray
    log_w: torch.Tensor
    site_log_w: dict

    @property
    def khat(self) -> np.ndarray:
        return pareto_khat(self.log_w).numpy()

    @property
    def particles(self) -> int:
        return self.log_w.shape[0]

    def iwae_at(self, k: int) -> np.ndarray:
        """IWAE_k per example, averaged over the K // k disjoint groups of k particles (an
        unbiased estimate of E[IWAE_k] with less variance than a single group)."""
        groups = self.particles // k
        lw = self.log_w[: groups * k].reshape(groups, k, -1).transpose(0, 1)
        return log_mean_exp(lw).mean(0).cpu().numpy()

    def variance_by_site(self) -> tuple[float, dict]:
        """Where the log-weights' spread comes from: ``(variance, shares)``. ``variance`` is the
        variance of log w over each example's particles, averaged over examples (nats^2; heavy
        tails and a creeping IWAE come with a large one). ``shares`` {site: fraction} splits it
        exactly: a site's share is the covariance of its own log p/q with log w, over the same
        particles, so the shares add up to 1 and the largest ones name the transitions where q
        is furthest from the posterior (a site can also take a negative share, when it makes up
        for the sites before it)."""
        total = sum(v.double() for v in self.site_log_w.values())  # log w, summed in float64
        centred = total - total.mean(0)
        variance = (centred ** 2).mean(0).sum()
        shares = {name: float(((v.double() - v.double().mean(0)) * centred).mean(0).sum() / variance)
                  for name, v in self.site_log_w.items()} if float(variance) > 0 else {}
        return float(variance) / total.shape[1], shares


@torch.no_grad()
def _weights(model, guide, x, y, num_particles: int, **kwargs):
    """``(log_w, elbo, sites)``: :func:`log_weights` and the :func:`site_log_ratios` that sum to
    ``log_w``."""
    log_w, model_trace, guide_trace = weighted_traces(model, guide, x, y, num_particles, **kwargs)
    shape = log_w.shape
    terms = GramELBO(beta=1.0, kl_balance=None).terms(model_trace, guide_trace)
    elbo = (terms["recon"] - terms["kl_total"]).expand(shape)
    sites = {k: v.float().cpu() for k, v in site_log_ratios(model_trace, guide_trace, shape).items()}
    return log_w.float(), elbo.float(), sites


@torch.no_grad()
def mixture_weights(model, guides, weight: float, component: int, x, y, num_particles: int,
                    make_kwargs=dict):
    """``(log_w, elbo, sites)`` as :func:`_weights` gives them, for K = ``num_particles``
    particles drawn from ``guides[component]`` of the defensive mixture ``q = (1 - weight)
    guides[0] + weight guides[1]``: ``log_w = log p(y, eps | x) - log q(eps | x, y)``, where the
    other guide's density of each particle comes from replaying it there
    (:func:`~gram_pyro.guide_fit.replayed_log_q`). ``elbo`` is ``log_w`` itself (the mixture has
    no closed-form KL), and ``sites`` splits it as the drawing guide's own :func:`site_log_ratios`
    plus a ``mixture`` term ``log q_component - log q``. ``make_kwargs()`` gives fresh extra
    arguments for each program run."""
    log_w, model_trace, guide_trace = weighted_traces(model, guides[component], x, y,
                                                      num_particles, **make_kwargs())
    shape = log_w.shape
    own = site_log_prob_sum(guide_trace, shape)
    other = replayed_log_q(guides[1 - component], guide_trace, x, y, num_particles,
                           **make_kwargs())
    log_q = [own, other] if component == 0 else [other, own]
    if 0 < weight < 1:
        log_mix = torch.logaddexp(math.log1p(-weight) + log_q[0], math.log(weight) + log_q[1])
    else:  # one guide alone
        log_mix = log_q[1] if weight >= 1 else log_q[0]
    sites = {k: v.float().cpu() for k, v in site_log_ratios(model_trace, guide_trace, shape).items()}
    sites["mixture"] = (own - log_mix).float().cpu()
    log_w = (log_w + own - log_mix).float()
    return log_w, log_w, sites


def log_weights(model, guide, x, y, num_particles: int, **kwargs):
    """``log w`` ``[K, B]`` of K guide particles for each example, and the matching analytic
    single-particle ELBO ``[K, B]`` (reconstruction minus every transition's KL). ``kwargs``
    go to model and guide alike (e.g. a shared recursion)."""
    return _weights(model, guide, x, y, num_particles, **kwargs)[:2]


def estimate(model, guide, x, y, num_particles: int, chunk: int | None = None,
             make_kwargs=dict, defensive: tuple | None = None) -> Estimate:
    """IWAE_K, its standard error and ESS, and the ELBO, per example of ``x`` ``[B, ...]``.

    Particles go ``chunk`` at a time (default: about 512 trajectories per pass; much larger
    passes thrash memory on CPU); ``make_kwargs()`` gives fresh extra arguments for each chunk's
    model/guide pair (GRAM passes a new :class:`SharedRecursion`).

    ``defensive=(guide_def, a)``: propose from the mixture ``(1 - a) guide + a guide_def``
    instead. Each particle k is drawn from ``guide_def`` when ``u_k < a`` (u uniform, from torch's
    generator; one draw per particle, shared by the examples), so every example's K particles
    are independent draws of the mixture, and weighed by :func:`mixture_weights`."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)  # tensors stay where they are
    chunk = chunk or max(1, TRAJECTORIES_PER_PASS // x.shape[0])
    if defensive is not None:
        guides, weight = (guide, defensive[0]), defensive[1]
        component = (torch.rand(num_particles) < weight).long()
    lws, elbos, sites = [], [], []
    for done in range(0, num_particles, chunk):
        k = min(chunk, num_particles - done)
        if defensive is None:
            lw, elbo, by_site = _weights(model, guide, x, y, k, **make_kwargs())
        else:  # the chunk's particles of each guide, put back in their drawn order
            which = component[done:done + k]
            parts = [(c, mixture_weights(model, guides, weight, c, x, y, int((which == c).sum()),
                                         make_kwargs)) for c in (0, 1) if bool((which == c).any())]
            order = torch.cat([torch.nonzero(which == c).flatten() for c, _ in parts])
            inverse = torch.argsort(order).to(x.device)
            lw, elbo = (torch.cat([p[i] for _, p in parts])[inverse] for i in (0, 1))
            by_site = {n: torch.cat([p[2][n] for _, p in parts])[inverse.cpu()]
                       for n in parts[0][1][2]}
        lws.append(lw)
        elbos.append(elbo)
        sites.append(by_site)
    lw, elbo = torch.cat(lws), torch.cat(elbos)
    site_log_w = {name: torch.cat([s[name] for s in sites]) for name in sites[0]}
    K = num_particles
    w = torch.exp(lw - lw.max(0).values).double()  # weights up to a per-example factor
    s1, s2 = w.sum(0), (w ** 2).sum(0)
    # delta method: Var[log mean w] ~ Var[w] / (K mean(w)^2)
    var = (s2 / K - (s1 / K) ** 2).clamp_min(0.0) * K / max(K - 1, 1)
    se = torch.sqrt(var / K) / (s1 / K)
    return Estimate(log_mean_exp(lw).cpu().numpy(), se.cpu().numpy(), ess(lw).cpu().numpy(),
                    elbo.mean(0).cpu().numpy(), lw.cpu(), site_log_w)


def _gather(t, idx):
    """``t`` ``[K, B, ...]`` with the particles of each column b re-drawn as ``idx[:, b]``."""
    if t is None:
        return None
    return torch.gather(t, 0, idx.reshape(*idx.shape, *([1] * (t.dim() - 2))).expand_as(t))


@torch.no_grad()
def smc_log_likelihood(model, guide, x, y, num_particles: int, *, n_steps: int,
                       ess_threshold: float = 0.5, twist: bool = False,
                       make_kwargs=dict) -> tuple[np.ndarray, int]:
    """SMC estimate of ``log p(y | x)`` per example ``[B]``, and the number of resampling events.

    The guide proposes one supervision step at a time (its T transitions), for K particles per
    example; the model replays them. After step n the particles target ``gamma_n = p(eps_1:n | x)
    p(y | h_n)^lambda_n`` and the last target is the joint ``p(y, eps | x)``, so the incremental
    weight of step n is ``p(eps_n) / q(eps_n) * p(y | h_n)^lambda_n / p(y | h_(n-1))^lambda_(n-1)``
    (the model observes y at the end of every call, which gives ``p(y | h_n)``). By default
    (``twist=False``) lambda is 0 before the last step: particles are resampled on how well the
    guide's noise agrees with the prior so far. ``twist=True`` sets every lambda to 1, resampling
    toward states whose decoder already predicts y; on the linear-Gaussian model, whose
    intermediate likelihood is overconfident, that was the worse choice (tests/test_likelihood.py).
    When an example's effective sample size falls below ``ess_threshold * K`` its particles are
    resampled (systematic) and the mean weight is banked: ``log Z = sum over resampling epochs of
    log mean_k w_k``. Z is unbiased for p(y | x) whatever the proposal, so log Z is a stochastic
    lower bound like IWAE_K. The model and the guide must take ``steps``, ``state`` and
    ``num_samples`` and return the state (``.h``, ``.l``) they reach."""
    k, b = num_particles, x.shape[0]
    log_z = torch.zeros(b, dtype=torch.float64, device=x.device)
    log_w = torch.zeros(k, b, dtype=torch.float64, device=x.device)
    prev_lik = torch.zeros(k, b, dtype=torch.float64, device=x.device)
    state, resampled = None, 0
    for n in range(n_steps):
        model_trace, guide_trace = guided_traces(model, guide, x, y, steps=[n], state=state,
                                                 num_samples=k, **make_kwargs())
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        lik = model_trace.nodes["y"]["log_prob"].expand(k, b).double()
        if not twist and n < n_steps - 1:
            lik = torch.zeros_like(lik)
        step_w = sum((site["log_prob"] - guide_trace.nodes[name]["log_prob"]).expand(k, b).double()
                     for name, site in model_trace.nodes.items()
                     if site["type"] == "sample" and not site["is_observed"])
        log_w = log_w + step_w + lik - prev_lik
        out = model_trace.nodes["_RETURN"]["value"]
        state, prev_lik = (out.h, out.l), lik
        if n < n_steps - 1:
            low = ess(log_w) < ess_threshold * k
            if bool(low.any()):
                log_z = log_z + torch.where(low, log_mean_exp(log_w), torch.zeros_like(log_z))
                keep = torch.arange(k, device=x.device)[:, None].expand(k, b)
                idx = torch.where(low[None, :], systematic_resample(log_w.float()), keep)
                state = tuple(_gather(t, idx) for t in state)
                prev_lik = _gather(prev_lik, idx)
                log_w = torch.where(low[None, :], torch.zeros_like(log_w), log_w)
                resampled += int(low.sum())
    return (log_z + log_mean_exp(log_w)).float().cpu().numpy(), resampled


def smc_estimate(model, guide, x, y, num_particles: int, *, n_steps: int, chunk: int | None = None,
                 make_kwargs=dict) -> tuple[np.ndarray, int]:
    """:func:`smc_log_likelihood` over examples in passes of about 512 trajectories."""
    per = max(1, (chunk or TRAJECTORIES_PER_PASS) // num_particles)
    parts = [smc_log_likelihood(model, guide, x[i:i + per], y[i:i + per], num_particles,
                                n_steps=n_steps, make_kwargs=make_kwargs)
             for i in range(0, x.shape[0], per)]
    return np.concatenate([p[0] for p in parts]), sum(p[1] for p in parts)


def run_loglik(run_dir, *, particles: int = 100, split: str = "test", limit: int | None = 50,
               chunk: int | None = None, seed: int = 0, device: str = "cpu",
               fitted_guide: bool = True, defensive_weight: float | None = None,
               smc: bool = True) -> dict:
    """``gram loglik``: the full ELBO, IWAE_k (k = 1, 10, 100, 1000 up to ``particles``), the
    Pareto k-hat of every example's weights and (``smc``) the SMC estimate with as many particles,
    of a run on the (input, completion) pairs of a split, in nats per example and bits per answer
    token. The guide is the one ``gram fit-guide`` fitted when there is one (``fitted_guide``),
    else the training guide, mixed with the defensive guide at ``defensive_weight`` when the
    run has one too (None: ``DEFENSIVE_WEIGHT``, 0.1; 0: not mixed in); the report says which. The LPRM factor is off here (the model runs
    without ``lprm_guidance``): these bound log p(y | x) of the model itself (log p(x) for an
    unconditional run)."""
    device = resolve_device(device)
    ckpt = load_checkpoint(run_dir)
    task, cfg, net = load_run(run_dir, device=device, guide_fit=fitted_guide, ckpt=ckpt)
    fit = getattr(net, "guide_fit", None)
    mixture, shield = None, None  # (defensive guide, its weight); its fit report
    defensive_weight = DEFENSIVE_WEIGHT if defensive_weight is None else defensive_weight
    if not 0.0 <= defensive_weight <= 1.0:
        raise UserError(f"the defensive guide's weight must be in [0, 1], got {defensive_weight}")
    if fit and defensive_weight > 0 and ckpt.get(DEFENSIVE_ENTRY) is not None:
        _, _, net_def = load_run(run_dir, device=device, guide_fit=True, ckpt=ckpt,
                                 guide_entry=DEFENSIVE_ENTRY)
        shield = net_def.guide_fit
        mixture = (programs(net_def, cfg)[1], float(defensive_weight))
    pairs = run_data(task, cfg).split(split, nonempty=True)
    x, y = pairs.pairs()
    answers = np.repeat(pairs.num_completions, pairs.num_completions)  # of each pair's input
    if limit and limit < len(x):
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
        x, y, answers = x[keep], y[keep], answers[keep]
    model, guide = programs(net, cfg)
    pyro.set_rng_seed(seed)
    x, y = (torch.as_tensor(a, device=model.device) for a in (x, y))
    ar = cfg.model == "ar"  # no latent variable: every weight is p(y | x), the estimate exact
    shared = (lambda: {}) if ar else (lambda: {"shared": SharedRecursion()})  # noqa: E731
    start = time.perf_counter()
    est = estimate(model, guide, x, y, particles, chunk=chunk, make_kwargs=shared,
                   defensive=mixture)
    iwae_seconds = time.perf_counter() - start
    n = len(x)
    tokens = task.answer_len
    sem = lambda v: float(np.std(v, ddof=1) / math.sqrt(n)) if n > 1 else None  # noqa: E731
    table = []
    for k in (1, 10, 100, 1000, 10_000):
        if k <= particles:
            v = est.iwae_at(k)
            table.append({"k": k, "iwae_nats": float(v.mean()), "sem": sem(v),
                          "bits_per_token": float(-v.mean() / tokens / math.log(2))})
    variance, shares = est.variance_by_site()
    khat = np.minimum(est.khat, KHAT_CAP)  # inf (one weight dominates) is reported as the cap
    measured = khat[~np.isnan(khat)]  # NaN below KHAT_MIN_PARTICLES particles
    flagged = khat > KHAT_RELIABLE  # False where NaN
    report = {
        "task": task.name, "unconditional": task.unconditional, "split": split, "examples": n,
        "particles": particles,
        "quantity": "log p(x)" if task.unconditional else "log p(y | x)",
        "model": model_label(cfg),
        "guide": "none (the AR baseline has no latent variable: log p(y | x) is exact)" if ar else
                 (f"fitted for likelihood (gram fit-guide, {steps_in_all(fit)} steps"
                  + (", with a mixer" if fit.get("mixer") else "")
                  + fit_method(fit) + f", {fit_heldout(fit)})") if fit else
                 "the training guide" + ("" if cfg.deterministic else
                                         " (`gram fit-guide RUN` fits one for likelihood)"),
        "defensive_guide": None if shield is None else
            (f"mixed in with weight {mixture[1]:g} (`gram fit-guide --defensive`, {steps_in_all(shield)} "
             f"steps{fit_method(shield)}, {fit_heldout(shield)}): IWAE "
             f"proposes from {1 - mixture[1]:g} x the fitted guide + {mixture[1]:g} x it; the "
             "ELBO is the mixture's, by Monte Carlo; SMC proposes from the fitted guide alone"),
        "defensive_weight": None if mixture is None else mixture[1],
        "elbo_nats": float(est.elbo.mean()), "elbo_sem": sem(est.elbo),
        "iwae_nats": float(est.iwae.mean()), "iwae_sem": sem(est.iwae),
        "iwae_mc_se_mean": float(np.mean(est.se)),
        "ess_mean": float(np.mean(est.ess)),
        "elbo_bits_per_token": float(-est.elbo.mean() / tokens / math.log(2)),
        "iwae_bits_per_token": float(-est.iwae.mean() / tokens / math.log(2)),
        "iwae_by_k": table,
        "iwae_seconds": iwae_seconds,
        "khat": [float(v) for v in khat],
        "khat_median": float(np.median(measured)) if len(measured) else None,
        "khat_unreliable": [int(i) for i in np.flatnonzero(flagged)],
        "khat_share_reliable": float(np.mean(measured <= KHAT_RELIABLE)) if len(measured) else None,
        "iwae_per_example": [float(v) for v in est.iwae],
        # where the flagged examples sit in likelihood: on N-Queens they are the inputs with many
        # valid completions, whose posterior over trajectories the guide covers least
        "khat_flagged_iwae_nats": float(est.iwae[flagged].mean()) if flagged.any() else None,
        "khat_others_iwae_nats": float(est.iwae[~flagged].mean()) if (~flagged).any() else None,
        # how many completions the split lists for each example's input (every valid one on the
        # generated tasks; None for p(x)), and the k-hat share at each number of them: on
        # N-Queens the guide fails the inputs with many
        "completions_per_example": None if task.unconditional else [int(c) for c in answers],
        "khat_by_completions": None if task.unconditional else
            [{"completions": label, "reliable": ok, "examples": total}
             for label, ok, total in khat_by_completions(khat, answers)],
        # the answer is discrete, so log p(y | x) <= 0: an estimate above 0 is too high by at least
        # its own value (the noise of an estimate near 0, or one weight's spike when far above)
        "iwae_above_zero": [int(i) for i in np.flatnonzero(est.iwae > 0)],
        "log_w_variance": variance,
        "log_w_variance_by_site": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
        "lprm_factor": "off (the bounds are on the model without LPRM guidance)",
    }
    if smc and not ar:
        start = time.perf_counter()
        pyro.set_rng_seed(seed + 1)
        v, resampled = smc_estimate(model, guide, x, y, particles, n_steps=cfg.n_supervision,
                                    chunk=chunk, make_kwargs=shared)
        report.update(smc_nats=float(v.mean()), smc_sem=sem(v), smc_resampling_events=resampled,
                      smc_seconds=time.perf_counter() - start,
                      smc_minus_iwae=float(np.mean(v - est.iwae)),
                      smc_minus_iwae_sem=sem(v - est.iwae))
    return report


def khat_by_completions(khat, completions) -> list[tuple[str, int, int]]:
    """``(label, reliable, examples)`` per group of examples whose inputs have 1, 2-3, 4-7, 8-15,
    ... valid completions (powers of two; groups without examples left out): how many of them
    have k-hat <= 0.7, of how many measured. ``khat`` and ``completions`` run over the same
    examples (they may be several draws' readings, concatenated); NaN readings are left out."""
    khat, completions = np.asarray(khat, dtype=float), np.asarray(completions)
    measured = ~np.isnan(khat)
    khat, completions = khat[measured], completions[measured]
    if not len(khat):
        return []
    groups = []
    low = 1
    while low <= completions.max():
        high = 2 * low - 1
        inside = (completions >= low) & (completions <= high)
        if inside.any():
            groups.append((str(low) if low == high else f"{low}-{high}",
                           int((khat[inside] <= KHAT_RELIABLE).sum()), int(inside.sum())))
        low *= 2
    return groups


def _pm(se) -> str:
    """``± se``, or ``± n/a`` for one example (no standard error over examples)."""
    return f"± {se:.3f}" if se is not None else "± n/a"


def largest_shares(shares: dict) -> str:
    """``"eps_1_1 26%, eps_2_0 23%, ..."``: the first ``SITES_SHOWN`` of a report's
    ``log_w_variance_by_site`` (largest first)."""
    return ", ".join(f"{name} {100 * v:.0f}%" for name, v in list(shares.items())[:SITES_SHOWN])


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
    if "smc_nats" in r:
        lines.append(f"  SMC, K = {r['particles']:<5} {r['smc_nats']:9.3f} {_pm(r['smc_sem'])} "
                     f"nats/example ({r['smc_resampling_events']} resampling events); SMC - IWAE "
                     f"= {r['smc_minus_iwae']:.3f} {_pm(r['smc_minus_iwae_sem'])}")
    if r["khat_median"] is None:
        lines.append(f"  Pareto k-hat: needs K >= {KHAT_MIN_PARTICLES} particles")
    else:
        bad = r["khat_unreliable"]
        lines.append(f"  Pareto k-hat: median {r['khat_median']:.2f}; "
                     f"{100 * r['khat_share_reliable']:.0f}% of examples <= {KHAT_RELIABLE}"
                     + (f"; k-hat > {KHAT_RELIABLE} (IWAE unreliable there) on {len(bad)} of "
                        f"{r['examples']}" if bad else ""))
        if bad:
            per, answers = r["iwae_per_example"], r.get("completions_per_example")
            lines.append("    flagged examples (their IWAE" + (", their inputs' number of valid "
                                                              "completions" if answers else "")
                         + "): " + ", ".join(f"{i} ({per[i]:.2f}"
                                             + (f", {answers[i]})" if answers else ")")
                                             for i in bad[:12])
                         + (" ..." if len(bad) > 12 else "")
                         + f"; IWAE {r['khat_flagged_iwae_nats']:.3f} nats on average against "
                         + (f"{r['khat_others_iwae_nats']:.3f} on the others"
                            if r["khat_others_iwae_nats"] is not None else "no others"))
        groups = r.get("khat_by_completions") or []
        if len(groups) > 1:
            lines.append("    k-hat <= 0.7 by the input's number of valid completions: "
                         + ", ".join(f"{g['completions']}: {g['reliable']} of {g['examples']}"
                                     for g in groups))
    if r.get("iwae_above_zero"):
        above = r["iwae_above_zero"]
        top = max(r["iwae_per_example"][i] for i in above)
        lines.append(f"  IWAE above 0 nats on {len(above)} of {r['examples']} (examples "
                     f"{', '.join(map(str, above[:12]))}{' ...' if len(above) > 12 else ''}; "
                     f"the largest {top:+.3f}): {q} <= 0 for discrete tokens, so each of these "
                     "estimates is too high by at least its own value")
    shares = r.get("log_w_variance_by_site") or {}
    if shares:
        lines.append(f"  log-weight variance {r['log_w_variance']:.2f} nats^2 per example; its "
                     "largest shares (covariance with log w) by site: " + largest_shares(shares)
                     + (f" (all {len(shares)} in the JSON)" if len(shares) > SITES_SHOWN else ""))
    lines.append(f"  guide: {r['guide']}")
    if r.get("defensive_guide"):
        lines.append(f"  defensive guide: {r['defensive_guide']}")
    lines.append("  (± is the standard error of the mean over examples; LPRM guidance is "
                 "off, so these bound the model's own likelihood)")
    return "\n".join(lines)
