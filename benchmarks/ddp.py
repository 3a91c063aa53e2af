"""Does data-parallel training (DDP, torchrun, gloo on CPU) train the same model as one process?

Trains the same small GRAM config for a fixed number of steps with 1 process and with P
processes (``torchrun --nproc_per_node=P -m gram_pyro.cli train``), both with the same GLOBAL
``batch_size`` (each of the P ranks takes batch_size / P examples), and compares the logged loss
curves (window means every ``eval_interval`` steps) and the training speed. Two variants:

- ``GRAM``: the stochastic model. Each rank draws its own noise, so the curves agree only
  statistically;
- ``noise-free``: the same config with the noise and the augmentation off. Then a P-process step
  is the 1-process step up to float reduction order, so the curves must agree to rounding: that
  difference is the RESULT (goal below ``GOAL``).

Every process uses one thread (so P processes use P cores); steps/s counts training time only
(no start-up, no evaluation), from the checkpoint.

    python benchmarks/ddp.py            # nqueens-8, the cpu preset, 200 steps
    python benchmarks/ddp.py --quick    # tiny, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, result_line, write_section  # noqa: E402
from gram_pyro.checkpoint import load_checkpoint  # noqa: E402

GOAL = 1e-3  # max |loss difference| of the noise-free curves (losses are O(10))
VARIANTS = {"GRAM": [], "noise-free": ["--deterministic", "--set", "augment=false"]}


def train(out: Path, nproc: int, task: str, steps: int, sets: list, extra: list) -> dict:
    """One run, as a user would start it; its speed, curve and final loss."""
    cli = ["-m", "gram_pyro.cli", "train", "--task", task, "--out", str(out), "--steps",
           str(steps), "--quiet", *[a for kv in sets for a in ("--set", kv)], *extra]
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([*launcher, *cli], capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode:
        raise SystemExit(f"{nproc}-process run failed:\n{r.stderr[-3000:]}")
    ckpt = load_checkpoint(out)
    curve = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    return {"steps_per_s": ckpt["step"] / ckpt["elapsed"], "curve": curve, "final": curve[-1]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings, under a minute")
    args = p.parse_args(argv)
    task, steps = "nqueens-8", args.steps
    sets = ["eval_interval=20", "eval_inputs=32", "eval_samples=2", "warmup_steps=20"]
    if args.quick:
        task, steps = "nqueens-5", 8
        sets = ["d_model=32", "n_layers=1", "k_low=1", "n_supervision=2", "batch_size=16",
                "eval_interval=2", "eval_inputs=4", "eval_samples=1", "warmup_steps=2"]
    out = args.out or Path(tempfile.mkdtemp(prefix="gram-ddp-"))
    rows, diffs = [], {}
    for name, extra in VARIANTS.items():
        runs = {n: train(out / f"{name}-{n}p", n, task, steps, sets, extra) for n in (1, args.nproc)}
        a, b = runs[1]["curve"], runs[args.nproc]["curve"]
        diffs[name] = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
        for n, r in runs.items():
            rows.append((name, n, r["steps_per_s"], r["final"], diffs[name] if n > 1 else None))
            print(f"{name:<10} {n} process{'es' if n > 1 else '  '}: {r['steps_per_s']:.2f} steps/s, "
                  f"final loss {r['final']:.4f}", flush=True)
    lines = ["| variant | processes | steps/s | final loss | max abs loss difference vs 1 process |",
             "|---|---|---|---|---|"]
    lines += [f"| {v} | {n} | {s:.2f} | {f:.4f} | {'' if d is None else f'{d:.2e}'} |"
              for v, n, s, f, d in rows]
    table = "\n".join(lines)
    print(table)
    cfg = ", ".join(sets)
    body = (f"{task}, the `cpu` preset with {cfg}; {steps} optimizer steps; batch_size is the "
            f"global batch, so the {args.nproc}-process run takes batch_size / {args.nproc} "
            "examples per rank. Launched as `torchrun --standalone "
            f"--nproc_per_node={args.nproc} -m gram_pyro.cli train ...` (gloo), one thread per "
            "process. The loss curve is the logged window mean every eval_interval steps. "
            "GRAM draws different noise on each rank, so its curves agree only statistically; "
            "the noise-free variant (no noise, no augmentation) must match to float rounding.\n\n"
            f"{table}")
    write_section("ddp", "Data-parallel training (DDP) against one process", body,
                  quick=args.quick)
    diff = diffs["noise-free"]
    print(result_line("ddp_loss_max_abs_diff", diff, f"<{GOAL:g}", diff < GOAL))


if __name__ == "__main__":
    main()
