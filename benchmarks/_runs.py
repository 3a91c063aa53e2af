"""Train-then-evaluate helper shared by the quality benchmarks: every variant gets the same
task, data, seed policy and wall-clock budget, and is judged on prior rollouts of the test split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from gram_pyro.config import make_config
from gram_pyro.evaluate import evaluate_run
from gram_pyro.train import Trainer


def train_and_evaluate(name, out: Path, *, task: str, minutes: float, seed: int, overrides=(),
                       deterministic=False, unconditional=False, samples=20, limit=None,
                       fresh=True) -> dict:
    run = out / f"{name}-seed{seed}"
    if fresh and run.exists():
        shutil.rmtree(run)
    cfg = make_config("cpu", list(overrides), task=task, seed=seed, max_minutes=minutes,
                      deterministic=deterministic or None, unconditional=unconditional or None)
    result = Trainer(cfg, run, progress=False).fit()
    report = evaluate_run(run, samples=samples, limit=limit, seed=seed)[0]
    report["train_steps"] = result["step"]
    report["train_minutes"] = result["minutes"]
    return report


def train_run(out: Path, name: str, *, task: str, minutes: float, seed: int, overrides=(),
              deterministic: bool = False, reuse: bool = False) -> Path:
    """A fresh run ``out/name-seed<seed>`` of ``task`` (``TASK-unconditional`` for p(x)) at the
    `cpu` preset with ``overrides``, trained for ``minutes``.

    With ``reuse``, a run already in that folder is kept, untrained further, when it is finished
    (:func:`finished_run`) and its stored config is exactly the one this call would train: only
    the evaluation is then repeated."""
    run = out / f"{name}-seed{seed}"
    unconditional = task.endswith("-unconditional")
    cfg = make_config("cpu", list(overrides), task=task.removesuffix("-unconditional"), seed=seed,
                      max_minutes=minutes, deterministic=deterministic or None,
                      unconditional=unconditional or None)
    if reuse and finished_run(run, cfg):
        print(f"reusing the finished run {run}", flush=True)
        return run
    shutil.rmtree(run, ignore_errors=True)
    Trainer(cfg, run, progress=False).fit()
    return run


# fields only the noise heads' sigma reads (a constant bias and a floor, no random draws), so a
# deterministic run trains bit for bit the same whatever they are
NOISE_ONLY = ("init_sigma", "sigma_floor")


def finished_run(run: Path, cfg) -> bool:
    """Does ``run`` hold a checkpoint of exactly ``cfg`` that reached its step or time budget?"""
    from dataclasses import asdict, replace

    from gram_pyro.build import resolve_device, resolve_precision
    from gram_pyro.checkpoint import config_of, load_checkpoint
    from gram_pyro.errors import UserError
    from gram_pyro.schedule import Schedule

    if not (run / "checkpoint.pt").exists():
        return False
    try:
        ckpt = load_checkpoint(run)
        # through Config, so a run saved before a field existed compares with that field's
        # default (which is what it trained with), and as config_of reads it back (links off for
        # a run trained before its task had links)
        stored = asdict(config_of(ckpt))
    except (UserError, KeyError, TypeError, ValueError):
        return False
    # a run stores the precision "auto" chose on this machine
    wanted = asdict(replace(cfg, precision=resolve_precision(cfg.precision, resolve_device(cfg.device))))
    if cfg.deterministic:  # the baseline samples no noise: the noise scale's fields never reach it
        for key in NOISE_ONLY:
            stored.pop(key, None)
            wanted.pop(key, None)
    # the trainer's own stopping rule, with the step horizon it had replanned to fit the clock
    done = Schedule(cfg, ckpt.get("total_steps")).done(ckpt["step"], ckpt["elapsed"])
    return stored == wanted and done


def tiny_run(task: str = "nqueens-6", unconditional: bool = False, eval_inputs: int = 8) -> Path:
    """A run trained for 20 steps at a tiny size in a fresh temporary folder: what the --quick
    mode of the scripts that read a trained run (loglik, selection, generation) evaluates."""
    import tempfile

    run = Path(tempfile.mkdtemp()) / "tiny"
    cfg = make_config("cpu", ["d_model=32", "n_layers=1", "steps=20", f"eval_inputs={eval_inputs}"],
                      task=task, unconditional=unconditional or None)
    Trainer(cfg, run, progress=False).fit()
    return run


def mean_sd(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def measure_run(folder: Path, task: str, seed: int, limit: int | None, gen_samples: int) -> dict:
    """Prior-rollout quality of one run folder, the way the quality benchmarks report it:
    conditional tasks on the test split with 20 samples per input at ``gram evaluate``'s default
    depth, without ACT (sample accuracy, micro and macro coverage@20, colouring conflicts per
    sample and, with one sample per input, summed over the test set); unconditional tasks
    (``TASK-unconditional``) by ``gram generate``'s defaults on ``gen_samples`` boards."""
    from gram_pyro.checkpoint import load_checkpoint

    steps = int(load_checkpoint(folder)["step"])
    if task.endswith("-unconditional"):
        from gram_pyro.generate import generate

        r = generate(folder, gen_samples, seed=seed)[0]
        return {"steps": steps, "valid": r["valid"], "distinct_valid": r["distinct_valid"],
                "coverage": r.get("coverage", float("nan"))}
    from gram_pyro.evaluate import evaluate_run

    r, traj, part, t, _ = evaluate_run(folder, samples=20, limit=limit, seed=seed, act=False)
    out = {"steps": steps, "depth": r["max_steps"], "trained_steps": r["trained_steps"],
           "acc": r["sample_accuracy"], "cov_micro": r["coverage_micro"],
           "cov_macro": r["coverage_macro"], "identical": r["identical_samples_fraction"],
           "ceiling_micro": r["coverage_ceiling_micro"], "ceiling_macro": r["coverage_ceiling_macro"]}
    if "conflicts_per_sample" in r:
        out["conflicts"] = r["conflicts_per_sample"]
        first = t.conflicts(part.inputs, traj.answers[:, 0])  # one sample per input
        out["conflicts_total"] = int(np.sum(first))
    return out
