"""Fit the critic (the ACT halt and LPRM value heads) on the finished model's own prior rollouts.

During training the critic learns jointly with the model (:mod:`gram_pyro.supervision`), on a
prior chain of the *current* weights: a moving target, one trajectory per input, and an LPRM
loss once per N_sup optimizer steps. Measured on N-Queens 8x8 after 3 minutes, that critic ranks
the trajectories of one input barely better than chance (within-input AUC about 0.53), while a
critic fitted afterwards on rollouts of the frozen model reaches about 0.8 (docs/RESULTS.md).
So training ends with this fit, and ``gram fit-critic`` runs it on any trained run:

1. roll out N prior trajectories for each of M training inputs with the frozen weights that
   inference uses (the EMA), and keep the state after every supervision step;
2. label every state: ACT target 1[the answer decoded from this state is correct], LPRM target
   r = the task's score of the trajectory's answer after all N_sup steps (``task.score``: 1
   exactly when it is correct; Sudoku gives partial credit, the share of cells breaking no rule);
3. fit the critic block and both heads by binary cross-entropy on minibatches of (trajectory,
   step) states, holding out a tenth of the inputs, and keep the parameters with the lowest
   held-out loss.

Only the critic and its heads change. The generative model, and so every sample, likelihood and
coverage figure, is untouched.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gram_pyro import metrics
from gram_pyro.build import programs, require_latent, run_data
from gram_pyro.checkpoint import RunLock, load_checkpoint, load_run, store_fit
from gram_pyro.errors import UserError

CRITIC_REPORT = "critic.json"


def critic_parameters(net) -> dict:
    """The critic's parameters by name: the critic block (if any) and the two heads."""
    prefixes = ("critic.", "halt_head.", "lprm_head.")
    return {k: p for k, p in net.named_parameters() if k.startswith(prefixes)}


@torch.no_grad()
def collect(model, task, inputs: np.ndarray, trajectories: int, *, chunk_size: int = 512,
            deadline: float | None = None, progress: bool = False) -> dict:
    """Prior rollouts of ``inputs`` ``[M, L]``, N per input, every step's state kept.

    Returns ``states`` ``[M', N, S, P + L, D]``, ``step_ok`` ``[M', N, S]`` (each step's answer
    correct), ``final_ok`` ``[M', N]`` and ``final_score`` ``[M', N]`` (``task.score`` of the
    last answer), for the first M' <= M inputs done by ``deadline``
    (``time.monotonic()``). Chunks hold ``chunk_size`` trajectories; with a deadline the first
    chunk is one input and each next one at most doubles, only while it should end in time,
    so a task with long rows (ARC's 900 cells) cannot overrun a short budget by a whole
    chunk. At least one input is always done. Everything stays on the model's device.
    """
    device = model.device
    full = max(1, chunk_size // trajectories)
    per = full if deadline is None else 1
    states, step_ok, scores = [], [], []
    bar = tqdm(total=len(inputs), desc="critic rollouts", disable=not progress, leave=False)
    i = 0
    while i < len(inputs):
        began = time.monotonic()
        x_np = inputs[i:i + per]
        i += len(x_np)
        x = torch.as_tensor(x_np, dtype=torch.long, device=device)
        state, hs, oks = None, [], []
        for s in range(model.n_supervision):
            out = model(x, steps=[s], state=state, num_samples=trajectories, heads=False)
            state = (out.h, out.l)
            hs.append(out.h.transpose(0, 1))  # [m, N, P + L, D]
            answers = model.answers(out).transpose(0, 1).reshape(-1, out.logits.shape[-2])
            ok = task.is_correct(np.repeat(x_np, trajectories, axis=0), answers.cpu().numpy())
            oks.append(torch.as_tensor(ok, dtype=torch.float32, device=device)
                       .reshape(len(x_np), trajectories))
        states.append(torch.stack(hs, 2))
        step_ok.append(torch.stack(oks, 2))
        score = task.score(np.repeat(x_np, trajectories, axis=0), answers.cpu().numpy())
        scores.append(torch.as_tensor(score, dtype=torch.float32, device=device)
                      .reshape(len(x_np), trajectories))
        bar.update(len(x_np))
        if deadline is not None:
            now = time.monotonic()
            per_input = (now - began) / len(x_np)
            per = min(full, 2 * per, int((deadline - now) // max(per_input, 1e-9)))
            if per < 1:
                break
    bar.close()
    step_ok = torch.cat(step_ok)
    return {"states": torch.cat(states), "step_ok": step_ok, "final_ok": step_ok[..., -1],
            "final_score": torch.cat(scores)}


def lprm_loss(value_logits: torch.Tensor, score: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """The LPRM's mean loss of value logits v against trajectory scores r in [0, 1]: BCE on the
    logit ("bce"), or the paper's squared error of the value, (sigmoid(v) - r)^2 ("squared").
    Both are minimized by sigmoid(v) = E[r | state]; BCE's gradient in v does not vanish where
    the sigmoid saturates on the wrong side."""
    if kind == "squared":
        return (torch.sigmoid(value_logits) - score).square().mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(value_logits, score)
    raise ValueError(f"unknown LPRM loss {kind!r}")


def _losses(net, pool: dict, batch: int = 1024):
    """Mean (LPRM BCE, ACT BCE) over all states of a pool, and the final-step values ``[M, N]``."""
    states, step_ok = pool["states"], pool["step_ok"]
    m, n, s = step_ok.shape
    flat = states.reshape(m * n * s, *states.shape[3:])
    act_t = step_ok.reshape(-1)
    lprm_t = pool["final_score"][..., None].expand(m, n, s).reshape(-1)
    halt, value = [], []
    for i in range(0, len(flat), batch):
        h, v = net.judge(flat[i:i + batch])
        halt.append(h)
        value.append(v)
    halt, value = torch.cat(halt), torch.cat(value)
    return (float(F.binary_cross_entropy_with_logits(value, lprm_t)),
            float(F.binary_cross_entropy_with_logits(halt, act_t)),
            torch.sigmoid(value).reshape(m, n, s)[..., -1])


@torch.no_grad()
def score(net, pool: dict) -> dict:
    """Held-out figures of the critic on a pool: BCEs against its targets, and the AUCs of the
    final LPRM value for correct against incorrect trajectories."""
    lprm, act, values = _losses(net, pool)
    ok = pool["final_ok"].cpu().numpy().astype(bool)
    v = values.cpu().numpy()
    return {"lprm_bce": lprm, "act_bce": act, "auc": metrics.auc(v, ok),
            "within_auc": metrics.within_auc(v, ok)}


def fit_critic(model, task, inputs: np.ndarray, *, trajectories: int = 8, steps: int = 600,
               batch_size: int = 256, lr: float = 1e-3, holdout: float = 0.1,
               eval_every: int = 50, seconds: float | None = None, seed: int = 0,
               max_inputs: int | None = None, pool_mb: float = 1024, lprm_kind: str = "bce",
               progress: bool = False) -> dict:
    """Fit ``model.net``'s critic in place on prior rollouts of ``inputs``; return a report.

    ``seconds`` bounds the whole fit: half of it at most for the rollouts, the rest for the
    optimizer steps (``steps`` is then an upper bound). The report holds the pool's size, the
    share of correct trajectories, the steps and seconds spent, and the held-out figures
    (:func:`score`) before and after. The pool of kept states is at most ``pool_mb`` MiB
    (fewer inputs are rolled out when it would be larger); ``max_inputs`` caps the inputs, a
    seeded random subset. The LPRM is fitted by ``lprm_kind``'s loss (:func:`lprm_loss`); the
    held-out figures, and the choice of the best weights, are BCEs whatever it is.
    """
    start = time.monotonic()
    net = model.net
    gen = np.random.default_rng(seed)
    per_input = trajectories * model.n_supervision * (net.n_prefix + net.seq_len) * net.d_model * 4
    cap = min(max_inputs or len(inputs), max(2, int(pool_mb * 2**20 // per_input)))
    inputs = np.asarray(inputs)[gen.permutation(len(inputs))][:cap]
    torch.manual_seed(seed)
    pool = collect(model, task, inputs, trajectories, progress=progress,
                   deadline=None if seconds is None else start + seconds / 2)
    m = len(pool["final_ok"])
    n_held = max(1, int(round(holdout * m))) if m > 1 else 0
    held = {k: v[:n_held] for k, v in pool.items()}
    train = {k: v[n_held:] for k, v in pool.items()} if n_held < m else pool
    before = score(net, held) if n_held else None

    params = critic_parameters(net)
    trainable = {k: p.requires_grad for k, p in params.items()}  # the EMA copy has none
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=lr)
    mt, n, s = train["step_ok"].shape
    states = train["states"].reshape(mt * n * s, *train["states"].shape[3:])
    act_t = train["step_ok"].reshape(-1)
    lprm_t = train["final_score"][..., None].expand(mt, n, s).reshape(-1)
    best, best_loss, done = copy.deepcopy(net.state_dict()), float("inf"), 0
    if n_held:  # the fit never leaves the held-out loss worse than it found it
        best_loss = before["lprm_bce"] + before["act_bce"]
    deadline = None if seconds is None else start + seconds
    bar = tqdm(total=steps, desc="critic fit", disable=not progress, leave=False)
    with torch.enable_grad():
        for done in range(1, steps + 1):
            idx = torch.as_tensor(gen.integers(0, len(states), batch_size), device=states.device)
            halt, value = net.judge(states[idx])
            loss = (lprm_loss(value, lprm_t[idx], lprm_kind)
                    + F.binary_cross_entropy_with_logits(halt, act_t[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
            last = done == steps or (deadline is not None and time.monotonic() > deadline)
            if n_held and (done % eval_every == 0 or last):
                with torch.no_grad():
                    lprm, act, _ = _losses(net, held)
                if lprm + act < best_loss:
                    best_loss, best = lprm + act, copy.deepcopy(net.state_dict())
            if last:
                break
    bar.close()
    for k, p in params.items():
        p.requires_grad_(trainable[k])
    if n_held:
        net.load_state_dict(best)
    after = score(net, held) if n_held else None
    return {"inputs": m, "heldout_inputs": n_held, "trajectories": trajectories,
            "correct_share": float(pool["final_ok"].mean()),
            "mean_score": float(pool["final_score"].mean()), "steps": done,
            "seconds": round(time.monotonic() - start, 1), "before": before, "after": after}


def fit_config_critic(model, task, cfg, train_inputs: np.ndarray, *, steps: int,
                      inputs: int | None = None, trajectories: int | None = None,
                      seconds: float | None = None, seed: int = 0,
                      progress: bool = False) -> tuple[dict, dict]:
    """:func:`fit_critic` with a run config's pool: up to ``inputs`` (default the config's
    ``critic_fit_inputs``) of the distinct ``train_inputs``, or for p(x) that many copies of the
    blank board; one trajectory each for the deterministic baseline (its are all equal).
    Returns the report and the fitted critic's weights (on the CPU), as checkpoints store them."""
    inputs = inputs or cfg.critic_fit_inputs
    pool = np.repeat(train_inputs[:1], inputs, axis=0) if cfg.unconditional else train_inputs
    report = fit_critic(model, task, pool, max_inputs=inputs,
                        trajectories=1 if cfg.deterministic else
                        (trajectories or cfg.critic_fit_trajectories),
                        steps=steps, seconds=seconds, seed=seed, lprm_kind=cfg.lprm_loss,
                        progress=progress)
    weights = {k: p.detach().cpu().clone() for k, p in critic_parameters(model.net).items()}
    return report, weights


def refit_run(run_dir, *, steps: int | None = None, inputs: int | None = None,
              trajectories: int | None = None, seconds: float | None = None, seed: int = 0,
              progress: bool = False, device="cpu") -> dict:
    """Fit the critic of a trained run (``gram fit-critic``) and store it in its checkpoint.

    The EMA weights with the run's current critic are the start; the fitted critic goes into the
    checkpoint's ``critic_fit`` (the training state is untouched), written atomically, and the
    report to ``critic.json`` in the run folder. Defaults come from the run's config.
    """
    run_dir = Path(run_dir)
    load_checkpoint(run_dir)  # a missing or bad run says so before anything is locked
    with RunLock(run_dir, "gram fit-critic"):  # no trainer may write the checkpoint meanwhile
        ckpt = load_checkpoint(run_dir)
        task, cfg, net = load_run(run_dir, device=device, ckpt=ckpt)
        require_latent(cfg, "`gram fit-critic`")
        model, _ = programs(net, cfg)
        steps = (cfg.critic_fit_steps or 600) if steps is None else steps
        report, weights = fit_config_critic(
            model, task, cfg, run_data(task, cfg).train.inputs, steps=steps, inputs=inputs,
            trajectories=trajectories, seconds=seconds, seed=seed, progress=progress)
        if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise UserError("the critic fit diverged (non-finite weights); the checkpoint is "
                            "unchanged (try fewer --steps)")
        store_fit(run_dir, ckpt, "critic_fit", weights, report, CRITIC_REPORT, "critic")
    return report


def format_report(r: dict) -> str:
    lines = [f"critic fitted on {r['inputs'] - r['heldout_inputs']} inputs x {r['trajectories']} "
             f"prior trajectories ({100 * r['correct_share']:.1f}% correct, mean score "
             f"{r['mean_score']:.3f}), {r['steps']} steps "
             f"in {r['seconds']:.0f} s; held out: {r['heldout_inputs']} inputs"]
    if r["before"]:
        lines.append(f"{'':>8} {'LPRM BCE':>9} {'ACT BCE':>8} {'AUC':>6} {'AUC within input':>17}")
        for name in ("before", "after"):
            s = r[name]
            lines.append(f"{name:>8} {s['lprm_bce']:>9.3f} {s['act_bce']:>8.3f} {s['auc']:>6.3f} "
                         f"{s['within_auc']:>17.3f}")
    return "\n".join(lines)
