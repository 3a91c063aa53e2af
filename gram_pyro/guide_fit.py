"""A guide fitted for likelihood estimation (``gram fit-guide``).

Training fits the guide q(eps | x, y) for one job: good targets for the prior, under the
training objective (beta, KL balancing, truncated backpropagation through supervision steps).
As a proposal for importance sampling it can sit many nats from the posterior, and then IWAE_K
creeps up with K and the weights are heavy-tailed (docs/RESULTS.md, loglik).

This module refits the guide alone for the likelihood's purpose. The generative model is
frozen (its weights do not even receive gradients); the guide's own parameters (the posterior
head and the answer embedding, :func:`guide_parameters`) maximize the full ELBO of Eq. 13 on
training pairs: every transition of every supervision step, beta = 1, no balancing, gradients
through the whole trajectory (``objective="elbo"``). That is KL(q || p(eps | x, y)), which
seeks a mode: where the posterior is a region of noise that decodes to y, a Gaussian q sits inside
it and the importance weights grow heavy tails. ``objective="rws"`` minimizes the other
direction, KL(p(eps | x, y) || q), which covers the posterior: the wake-phase q update of
reweighted wake-sleep (Pyro's :class:`~pyro.infer.ReweightedWakeSleep`), here on the
``trajectories`` plate so that K particles are one batched pass (:func:`wake_phi_loss`).
``objective="iwae"`` sits between the two: q maximizes IWAE_K itself, with the doubly
reparameterized gradient (DReG, :func:`iwae_dreg_loss`); at K = 1 that is the ELBO's direction,
and as K grows its optimum moves toward covering the posterior.
A tenth of the pairs is held out and the parameters with the best held-out bound are kept (the
ELBO for ``elbo``, IWAE_K for ``rws`` and ``iwae``); the parameters judged and kept are a running average of
Adam's iterates (Polyak averaging), which irons out the jitter of its Monte Carlo steps. The
result is stored in the checkpoint's ``guide_fit`` entry, beside the
training state, which it leaves alone; :func:`gram_pyro.checkpoint.load_run` puts it on top of
the EMA weights for ``gram loglik`` only. The prior never reads these parameters, so prior
rollouts (and every accuracy or coverage figure) are the same before and after.

The two directions pull apart: a q fitted to the ELBO has the tight ELBO and light body a
likelihood needs but heavy-tailed weights, and one fitted to IWAE_K covers the posterior at the
cost of the ELBO (docs/design.md §6). A *defensive* guide (``refit_run(defensive=True)``,
``gram fit-guide --defensive``) is a second q, fitted from the first with a covering objective
and stored in the ``guide_defensive`` entry, that ``gram loglik`` mixes in with a weight a it
chooses (``--defensive-weight``, :mod:`gram_pyro.likelihood`). Each particle comes from q_fit
or q_def, and its weight is p over the mixture density ``(1 - a) q_fit + a q_def``
(Hesterberg's defensive importance sampling), which is at most 1/a times p / q_def: the tail is
bounded by the covering guide's, while the ELBO of the mixture loses at most a times the gap
between the two guides' ELBOs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from pyro import poutine
from tqdm.auto import tqdm

from gram_pyro.build import model_label, programs, run_data
from gram_pyro.checkpoint import RunLock, load_checkpoint, load_run, store_fit
from gram_pyro.elbo import GramELBO, guided_traces
from gram_pyro.errors import UserError
from gram_pyro.importance import TRAJECTORIES_PER_PASS, log_mean_exp, normalized, \
    site_log_prob_sum, weighted_traces
from gram_pyro.recursion import SharedRecursion
from gram_pyro.schedule import warmed_decay

OBJECTIVES = ("elbo", "rws", "iwae")
AVERAGE = 0.995  # decay of the parameters' running average that the fit judges and keeps
HELDOUT_PARTICLES = 8  # guide particles per held-out pair for the held-out ELBO, at most
HELDOUT_TRAJECTORIES = 256  # ... and at most this many trajectories per held-out score

GUIDE_REPORT = "guide.json"
DEFENSIVE_ENTRY = "guide_defensive"  # the checkpoint entry of the defensive guide
DEFENSIVE_REPORT = "guide_defensive.json"
DEFENSIVE_WEIGHT = 0.1  # gram loglik's default weight of the defensive guide in the mixture


def guide_parameters(net) -> dict:
    """The parameters only the guide reads, by name: the posterior head, the embedding of the
    answer it conditions on, and the fitted guide's mixer if it has one."""
    prefixes = ("posterior_head.", "target_embed.", "guide_mixer.")
    return {k: p for k, p in net.named_parameters() if k.startswith(prefixes)}


def heldout_elbo(model, guide, x, y, *, batch_size: int, seed: int, particles: int = 1) -> float:
    """The mean full ELBO (nats per pair) of ``(x, y)``, ``particles`` guide particles each, on
    an RNG forked and seeded with ``seed`` (the same noise every time it is called: comparable
    across a fit)."""
    elbo = GramELBO(beta=1.0, kl_balance=None)
    devices = [x.device] if x.device.type == "cuda" else []
    x, y = x.repeat(particles, 1), y.repeat(particles, 1)
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            for t in elbo.particle_terms(model, guide, x[i:i + batch_size], y[i:i + batch_size],
                                         shared=SharedRecursion()):
                total += float((t["recon"] - t["kl_total"]).sum())
    return total / len(x)


def heldout_iwae(model, guide, x, y, *, particles: int, seed: int) -> float:
    """The mean IWAE_K (nats per pair, K = ``particles``) of ``(x, y)`` on an RNG forked and
    seeded with ``seed``: the bound the ``rws`` fit keeps the best of."""
    devices = [x.device] if x.device.type == "cuda" else []
    per = max(1, TRAJECTORIES_PER_PASS // particles)  # pairs per pass
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(x), per):
            log_w, _, _ = weighted_traces(model, guide, x[i:i + per], y[i:i + per], particles,
                                        shared=SharedRecursion())
            total += float(log_mean_exp(log_w).sum())
    return total / len(x)


def replayed_log_q(guide, trace, x, y, particles: int, **kwargs) -> torch.Tensor:
    """``log q(eps_k | x, y)`` ``[K, B]`` of the K particles in a guide ``trace``, read by
    replaying them through ``guide`` (``poutine.replay``) with the same ``kwargs``: under GRAM's
    ``shared=SharedRecursion()`` the recursion is reused, and only q's own layers run again."""
    replayed = poutine.trace(poutine.replay(guide, trace=trace)).get_trace(
        x, y, num_samples=particles, **kwargs)
    replayed.compute_log_prob()
    return site_log_prob_sum(replayed, (particles, x.shape[0]))


def wake_phi_loss(model, guide, x, y, particles: int, **kwargs) -> torch.Tensor:
    """Reweighted wake-sleep's wake-phase loss for q, summed over the pairs:
    ``-sum_k w~_k log q(eps_k | x, y)`` with ``eps_k ~ q`` held fixed and ``w~`` the
    self-normalized importance weights ``p(y, eps_k | x) / q(eps_k | x, y)``. Its gradient in q's
    parameters estimates that of ``-KL(p(eps | x, y) || q)``: it pulls q over the whole
    posterior, which is what a proposal needs. The particles are drawn without gradient and the
    guide replays them (:func:`replayed_log_q`), so only q's own layers carry gradient."""
    with torch.no_grad():
        log_w, _, sampled = weighted_traces(model, guide, x, y, particles, **kwargs)
    return -(normalized(log_w) * replayed_log_q(guide, sampled, x, y, particles, **kwargs)).sum()


def iwae_dreg_loss(model, guide, x, y, particles: int, **kwargs) -> torch.Tensor:
    """Minus IWAE_K's doubly reparameterized surrogate for q, summed over the pairs:
    ``-sum_k sg(w~_k^2) log w_k``, where the K particles are reparameterized samples of q (their
    paths carry gradient through the whole trajectory), ``log w_k = log p(y, eps_k | x) -
    log q(eps_k; sg(phi))`` with q's parameters phi held constant, and w~ the self-normalized
    weights. Its gradient in phi is DReG's estimate of the gradient of IWAE_K (Tucker et al.,
    2018): unbiased, and without the score-function term whose variance grows with K, so the
    signal does not vanish as K grows. ``guide`` must be an ``nn.Module``: log q is read by
    replaying its particles with every parameter of the module detached
    (:func:`torch.func.functional_call`), so only the samples' paths are differentiated. The
    model's parameters get gradient if they require it; the guide fit freezes them."""
    model_trace, guide_trace = guided_traces(model, guide, x, y, num_samples=particles, **kwargs)
    model_trace.compute_log_prob()
    shape = (particles, x.shape[0])
    constants = {k: v.detach() for k, v in guide.named_parameters()}

    def guide_at_constants(*args, **kw):
        return torch.func.functional_call(guide, constants, args, kw)

    log_w = site_log_prob_sum(model_trace, shape) - replayed_log_q(
        guide_at_constants, guide_trace, x, y, particles, **kwargs)
    return -(normalized(log_w).detach() ** 2 * log_w).sum()


def fit_guide(model, guide, x: np.ndarray, y: np.ndarray, *, steps: int = 400,
              batch_size: int = 32, lr: float = 1e-3, holdout: float = 0.1, eval_every: int = 50,
              seconds: float | None = None, seed: int = 0, max_heldout: int = 256,
              objective: str = "elbo", particles: int = 16, average: float = AVERAGE,
              heldout_particles: int = HELDOUT_PARTICLES, progress: bool = False) -> dict:
    """Fit the guide's parameters of ``model.net`` in place on the pairs ``(x, y)``; a report.

    Adam, the model frozen, on a batch's minus full ELBO (``objective="elbo"``:
    :class:`~gram_pyro.elbo.GramELBO` with beta = 1 and no KL balancing) or its
    :func:`wake_phi_loss` with ``particles`` particles per pair (``"rws"``: a step then runs
    ``batch_size * particles`` trajectories, without gradient through them) or its
    :func:`iwae_dreg_loss` (``"iwae"``: as many trajectories, with gradient through them). ``seconds`` bounds the fit
    (``steps`` is then an upper bound). A seeded tenth of the pairs (at most ``max_heldout``) is
    held out; the parameters with the best held-out ELBO (``elbo``, ``heldout_particles``
    particles per pair, fewer where that would pass ``HELDOUT_TRAJECTORIES`` trajectories) or
    IWAE_K (``rws``, ``iwae``) are kept, so the fit never leaves that bound worse.
    What is judged and kept is the running average of the parameters (Polyak averaging: an
    exponential moving average with decay ``average``, ramped up over the first steps by
    :func:`~gram_pyro.schedule.warmed_decay` as the training EMA is; 0 keeps the iterates
    themselves), which irons out the jitter of Adam's Monte Carlo steps."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown guide-fit objective {objective!r}; choose {' or '.join(OBJECTIVES)}")
    if not 0.0 <= average < 1.0:
        raise UserError(f"the parameter average's decay must be in [0, 1), got {average}")
    if objective != "elbo" and particles < 2:
        raise UserError(f"the {objective} fit needs at least 2 particles per pair, got {particles}")
    start = time.monotonic()
    net = model.net
    device = next(net.parameters()).device
    gen = np.random.default_rng(seed)
    order = gen.permutation(len(x))
    n_held = min(max_heldout, max(1, int(round(holdout * len(x))))) if len(x) > 1 else 0
    if n_held == 0 or len(x) - n_held < 1:
        raise UserError("fitting the guide needs at least 2 training pairs")
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)  # noqa: E731
    hx, hy = as_t(x[order[:n_held]]), as_t(y[order[:n_held]])
    tx, ty = x[order[n_held:]], y[order[n_held:]]
    # many held-out pairs average the noise out themselves (and an evaluation every 50 steps
    # must stay cheap): 8 particles each for Shidoku's 23, 1 for N-Queens 8x8's 256
    heldout_particles = max(1, min(heldout_particles, HELDOUT_TRAJECTORIES // n_held))
    if objective == "elbo":
        score = lambda: heldout_elbo(model, guide, hx, hy, batch_size=batch_size, seed=seed,  # noqa: E731
                                     particles=heldout_particles)
    else:
        score = lambda: heldout_iwae(model, guide, hx, hy, particles=particles, seed=seed)  # noqa: E731
    before = score()

    params = guide_parameters(net)
    grads = {k: p.requires_grad for k, p in net.named_parameters()}
    for k, p in net.named_parameters():
        p.requires_grad_(k in params)  # the model is frozen: no gradient reaches its weights
    opt = torch.optim.Adam(params.values(), lr=lr)
    elbo = GramELBO(beta=1.0, kl_balance=None)
    best = {k: p.detach().clone() for k, p in params.items()}
    mean = {k: p.detach().clone() for k, p in params.items()}  # the running average

    def score_average() -> float:
        """The held-out bound at the averaged parameters (the iterates put back after)."""
        current = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(mean[k])
            value = score()
            for k, p in params.items():
                p.copy_(current[k])
        return value

    best_value, done, curve = before, 0, [(0, before)]
    deadline = None if seconds is None else start + seconds
    bar = tqdm(total=steps, desc="guide fit", disable=not progress, leave=False)
    try:
        with torch.enable_grad():
            for done in range(1, steps + 1):
                idx = gen.integers(0, len(tx), min(batch_size, len(tx)))
                bx, by = as_t(tx[idx]), as_t(ty[idx])
                if objective == "elbo":
                    loss = elbo.differentiable_loss(model, guide, bx, by, shared=SharedRecursion())
                elif objective == "rws":
                    loss = wake_phi_loss(model, guide, bx, by, particles, shared=SharedRecursion())
                else:
                    loss = iwae_dreg_loss(model, guide, bx, by, particles, shared=SharedRecursion())
                loss = loss / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not math.isfinite(float(loss.detach())):
                    break  # keep the best finite parameters seen
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                opt.step()
                decay = warmed_decay(average, done)
                with torch.no_grad():
                    for k, p in params.items():
                        mean[k].lerp_(p.detach(), 1.0 - decay)
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                last = done == steps or (deadline is not None and time.monotonic() > deadline)
                if done % eval_every == 0 or last:
                    value = score_average()
                    curve.append((done, value))
                    if value > best_value:
                        best_value = value
                        best = {k: v.clone() for k, v in mean.items()}
                if last:
                    break
    finally:
        bar.close()
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(best[k])
        for k, p in net.named_parameters():
            p.requires_grad_(grads[k])
    return {"pairs": len(x), "heldout_pairs": n_held, "steps": done, "batch_size": batch_size,
            "lr": lr, "objective": objective, "average": average,
            "heldout_particles": heldout_particles if objective == "elbo" else None,
            "particles": particles if objective != "elbo" else None,
            "bound": "full ELBO" if objective == "elbo" else f"IWAE_{particles}",
            "seconds": round(time.monotonic() - start, 1),
            "heldout_before": before, "heldout_after": best_value,
            "curve": [[s, round(v, 4)] for s, v in curve]}


def refit_run(run_dir, *, steps: int = 400, seconds: float | None = None, batch_size: int = 32,
              lr: float = 1e-3, seed: int = 0, mixer: bool = True, objective: str = "elbo",
              particles: int = 16, defensive: bool = False, progress: bool = False,
              device="cpu") -> dict:
    """Fit a guide for likelihood on a trained run (``gram fit-guide``) and store it.

    Starts from the run's EMA weights with its current fitted guide if it has one (so a second
    call goes on from the first; the report's ``steps_in_all`` counts every call's steps), fits
    on the training pairs, and writes the fitted parameters
    to the checkpoint's ``guide_fit`` entry (atomically, holding the run folder's lock) and the
    report to ``guide.json``. The training state, the EMA weights and the critic are untouched.
    ``mixer``: give q a :class:`~gram_pyro.nets.GuideMixer` (kept by a later refit either way).
    ``objective``, ``particles``: what q is fitted to (:func:`fit_guide`).

    ``defensive`` fits the defensive guide instead: it starts from the stored defensive guide
    if there is one (going on from it, as the plain fit does) and else from the fitted guide
    (which the run must have), and goes to the ``guide_defensive`` entry and ``guide_defensive.json``,
    leaving ``guide_fit`` as it was; ``gram loglik`` then proposes from ``(1 - a) q_fit + a
    q_def`` (the module docstring). Use a covering objective for it
    (``iwae`` or ``rws``): an ELBO fit would only repeat the first."""
    run_dir = Path(run_dir)
    load_checkpoint(run_dir)  # a missing or bad run says so before anything is locked
    with RunLock(run_dir, "gram fit-guide"):
        ckpt = load_checkpoint(run_dir)
        target = DEFENSIVE_ENTRY if defensive else "guide_fit"  # the entry this fit writes
        again = ckpt.get(target) is not None  # then it goes on from it, else from the fitted guide
        task, cfg, net = load_run(run_dir, device=device, guide_fit=True, ckpt=ckpt,
                                  guide_entry=target if again else "guide_fit")
        if cfg.deterministic or cfg.model == "ar":
            raise UserError(f"{str(run_dir)!r} is the {model_label(cfg)}: it has no latent "
                            "noise, so its likelihood is exact and needs no guide")
        if defensive and (ckpt.get("guide_fit") is None or getattr(net, "guide_fit", None) is None):
            raise UserError(f"{str(run_dir)!r} has no fitted guide for the defensive one to go on "
                            f"from and be mixed with; run `gram fit-guide {run_dir}` first")
        before = getattr(net, "guide_fit", None) if again else None  # the fit gone on from
        if mixer:
            net.add_guide_mixer()
        model, guide = programs(net, cfg)
        x, y = run_data(task, cfg).train.pairs()
        report = fit_guide(model, guide, x, y, steps=steps, batch_size=batch_size, lr=lr,
                           seconds=seconds, seed=seed, objective=objective, particles=particles,
                           progress=progress)
        weights = {k: p.detach().cpu().clone() for k, p in guide_parameters(net).items()}
        report["step"] = int(ckpt.get("step", 0))
        report["steps_in_all"] = report["steps"] + (steps_in_all(before) if before else 0)
        report["mixer"] = net.guide_mixer is not None
        report["defensive"] = defensive
        store_fit(run_dir, ckpt, target, weights, report,
                  DEFENSIVE_REPORT if defensive else GUIDE_REPORT,
                  "defensive guide" if defensive else "guide")
    return report


def fit_bound(r: dict) -> str:
    """The held-out bound a fit report's figures are (reports before ``rws`` existed: the ELBO)."""
    return r.get("bound", "full ELBO")


def steps_in_all(r: dict) -> int:
    """The optimizer steps of a stored fit, over every ``gram fit-guide`` call that went on
    from the one before (reports from before the count existed: their own steps)."""
    return int(r.get("steps_in_all", r["steps"]))


def fit_heldout(r: dict) -> str:
    """``"held-out <bound> a -> b nats"`` of a stored fit, saying when a and b span only its last
    call's steps (a fit that went on from an earlier one)."""
    last = f" over the last {r['steps']}" if steps_in_all(r) > r["steps"] else ""
    return f"held-out {fit_bound(r)} {r['heldout_before']:.3f} -> {r['heldout_after']:.3f} nats{last}"


def fit_method(r: dict) -> str:
    """``", rws with K particles"`` (or iwae) for a multi-particle fit's report, else nothing
    (the ELBO fit)."""
    objective = r.get("objective", "elbo")
    return f", {objective} with {r['particles']} particles" if objective != "elbo" else ""


def format_report(r: dict) -> str:
    defensive = r.get("defensive", False)
    return (("defensive " if defensive else "") + f"guide fitted on {r['pairs'] - r['heldout_pairs']} "
            f"training pairs for {r['steps']} steps"
            + (f" ({steps_in_all(r)} in all, going on from the last fit)"
               if steps_in_all(r) > r['steps'] else "")
            + f" (batch {r['batch_size']}, lr {r['lr']:g}{fit_method(r)}) in "
            f"{r['seconds']:.0f} s; "
            f"held-out {fit_bound(r)} on {r['heldout_pairs']} pairs: {r['heldout_before']:.3f} -> "
            f"{r['heldout_after']:.3f} nats per pair. `gram loglik` now "
            + ("mixes it into the fitted guide (--defensive-weight, default "
               f"{DEFENSIVE_WEIGHT:g})" if defensive else "uses it")
            + "; prior rollouts are unchanged.")
