"""A guide fitted for likelihood estimation (``gram fit-guide``).

Training fits the guide q(eps | x, y) for one job: good targets for the prior, under the
training objective (beta, KL balancing, truncated backpropagation through supervision steps).
As a proposal for importance sampling it can sit many nats from the posterior, and then IWAE_K
creeps up with K and the weights are heavy-tailed (docs/RESULTS.md, loglik).

This module refits the guide alone for the likelihood's purpose. The generative model is
frozen (its weights do not even receive gradients); the guide's own parameters (the posterior
head and the answer embedding, :func:`guide_parameters`) maximize the full ELBO of Eq. 13 on
training pairs: every transition of every supervision step, beta = 1, no balancing, gradients
through the whole trajectory. A tenth of the pairs is held out and the parameters with the best
held-out ELBO are kept. The result is stored in the checkpoint's ``guide_fit`` entry, beside the
training state, which it leaves alone; :func:`gram_pyro.checkpoint.load_run` puts it on top of
the EMA weights for ``gram loglik`` only. The prior never reads these parameters, so prior
rollouts (and every accuracy or coverage figure) are the same before and after.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gram_pyro.build import model_label, programs, run_data
from gram_pyro.checkpoint import RunLock, load_checkpoint, load_run, store_fit
from gram_pyro.elbo import GramELBO
from gram_pyro.errors import UserError
from gram_pyro.recursion import SharedRecursion

GUIDE_REPORT = "guide.json"


def guide_parameters(net) -> dict:
    """The parameters only the guide reads, by name: the posterior head, the embedding of the
    answer it conditions on, and the fitted guide's mixer if it has one."""
    prefixes = ("posterior_head.", "target_embed.", "guide_mixer.")
    return {k: p for k, p in net.named_parameters() if k.startswith(prefixes)}


def heldout_elbo(model, guide, x, y, *, batch_size: int, seed: int) -> float:
    """The mean full ELBO (nats per pair) of ``(x, y)``, one guide particle each, on an RNG forked
    and seeded with ``seed`` (the same noise every time it is called: comparable across a fit)."""
    elbo = GramELBO(beta=1.0, kl_balance=None)
    devices = [x.device] if x.device.type == "cuda" else []
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            for t in elbo.particle_terms(model, guide, x[i:i + batch_size], y[i:i + batch_size],
                                         shared=SharedRecursion()):
                total += float((t["recon"] - t["kl_total"]).sum())
    return total / len(x)


def fit_guide(model, guide, x: np.ndarray, y: np.ndarray, *, steps: int = 400,
              batch_size: int = 32, lr: float = 1e-3, holdout: float = 0.1, eval_every: int = 50,
              seconds: float | None = None, seed: int = 0, max_heldout: int = 256,
              progress: bool = False) -> dict:
    """Fit the guide's parameters of ``model.net`` in place on the pairs ``(x, y)``; a report.

    Adam on minus the full ELBO (:class:`~gram_pyro.elbo.GramELBO` with beta = 1 and no KL
    balancing) of a batch, the model frozen. ``seconds`` bounds the fit (``steps`` is then an
    upper bound). A seeded tenth of the pairs (at most ``max_heldout``) is held out; the
    parameters with the best held-out ELBO are kept, so the fit never leaves it worse."""
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
    score = lambda: heldout_elbo(model, guide, hx, hy, batch_size=batch_size, seed=seed)  # noqa: E731
    before = score()

    params = guide_parameters(net)
    grads = {k: p.requires_grad for k, p in net.named_parameters()}
    for k, p in net.named_parameters():
        p.requires_grad_(k in params)  # the model is frozen: no gradient reaches its weights
    opt = torch.optim.Adam(params.values(), lr=lr)
    elbo = GramELBO(beta=1.0, kl_balance=None)
    best = {k: p.detach().clone() for k, p in params.items()}
    best_value, done, curve = before, 0, [(0, before)]
    deadline = None if seconds is None else start + seconds
    bar = tqdm(total=steps, desc="guide fit", disable=not progress, leave=False)
    try:
        with torch.enable_grad():
            for done in range(1, steps + 1):
                idx = gen.integers(0, len(tx), min(batch_size, len(tx)))
                bx, by = as_t(tx[idx]), as_t(ty[idx])
                loss = elbo.differentiable_loss(model, guide, bx, by, shared=SharedRecursion()) / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not math.isfinite(float(loss.detach())):
                    break  # keep the best finite parameters seen
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                opt.step()
                bar.update()
                bar.set_postfix(elbo=f"{-float(loss.detach()):.3f}")
                last = done == steps or (deadline is not None and time.monotonic() > deadline)
                if done % eval_every == 0 or last:
                    value = score()
                    curve.append((done, value))
                    if value > best_value:
                        best_value = value
                        best = {k: p.detach().clone() for k, p in params.items()}
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
            "lr": lr, "seconds": round(time.monotonic() - start, 1),
            "heldout_before": before, "heldout_after": best_value,
            "curve": [[s, round(v, 4)] for s, v in curve]}


def refit_run(run_dir, *, steps: int = 400, seconds: float | None = None, batch_size: int = 32,
              lr: float = 1e-3, seed: int = 0, mixer: bool = True, progress: bool = False,
              device="cpu") -> dict:
    """Fit a guide for likelihood on a trained run (``gram fit-guide``) and store it.

    Starts from the run's EMA weights with its current fitted guide if it has one (so a second
    call goes on from the first), fits on the training pairs, and writes the fitted parameters
    to the checkpoint's ``guide_fit`` entry (atomically, holding the run folder's lock) and the
    report to ``guide.json``. The training state, the EMA weights and the critic are untouched.
    ``mixer``: give q a :class:`~gram_pyro.nets.GuideMixer` (kept by a later refit either way)."""
    run_dir = Path(run_dir)
    load_checkpoint(run_dir)  # a missing or bad run says so before anything is locked
    with RunLock(run_dir, "gram fit-guide"):
        ckpt = load_checkpoint(run_dir)
        task, cfg, net = load_run(run_dir, device=device, guide_fit=True, ckpt=ckpt)
        if cfg.deterministic or cfg.model == "ar":
            raise UserError(f"{str(run_dir)!r} is the {model_label(cfg)}: it has no latent "
                            "noise, so its likelihood is exact and needs no guide")
        if mixer:
            net.add_guide_mixer()
        model, guide = programs(net, cfg)
        x, y = run_data(task, cfg).train.pairs()
        report = fit_guide(model, guide, x, y, steps=steps, batch_size=batch_size, lr=lr,
                           seconds=seconds, seed=seed, progress=progress)
        weights = {k: p.detach().cpu().clone() for k, p in guide_parameters(net).items()}
        report["step"] = int(ckpt.get("step", 0))
        report["mixer"] = net.guide_mixer is not None
        store_fit(run_dir, ckpt, "guide_fit", weights, report, GUIDE_REPORT, "guide")
    return report


def format_report(r: dict) -> str:
    return (f"guide fitted on {r['pairs'] - r['heldout_pairs']} training pairs for {r['steps']} "
            f"steps (batch {r['batch_size']}, lr {r['lr']:g}) in {r['seconds']:.0f} s; held-out "
            f"full ELBO on {r['heldout_pairs']} pairs: {r['heldout_before']:.3f} -> "
            f"{r['heldout_after']:.3f} nats per pair. `gram loglik` now uses it; prior rollouts "
            "are unchanged.")
