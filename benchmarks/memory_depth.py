"""Memory against depth: peak memory of training at N_sup in {2, 4, 8, 16}, each in its own
process, and of inference against the number of trajectories.

    python benchmarks/memory_depth.py
    python benchmarks/memory_depth.py --quick

Truncated backpropagation (one optimizer step per supervision step, state detached between
them) should keep training memory flat in depth: goal peak(16) / peak(2) <= 1.10. Inference
memory should grow linearly in the number of trajectories. Peak = the child's maximum resident
set size (ru_maxrss), which includes the Python and torch baseline; the baseline alone (imports
and the model, no step) is reported too, so the growth can be read off.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402

CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
import torch
from gram_pyro.config import make_config
from gram_pyro.build import programs
from gram_pyro.train import Trainer
from gram_pyro.inference import prior_rollouts
mode, value, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
with tempfile.TemporaryDirectory() as tmp:
    if mode == "train":
        cfg = make_config("cpu", overrides + [f"n_supervision={value}"], task="nqueens-8")
        trainer = Trainer(cfg, Path(tmp) / "r", progress=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(2):
            trainer.train_batch()
    elif mode == "baseline":
        cfg = make_config("cpu", overrides, task="nqueens-8")
        trainer = Trainer(cfg, Path(tmp) / "r", progress=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        cfg = make_config("cpu", overrides, task="nqueens-8")
        trainer = Trainer(cfg, Path(tmp) / "r", progress=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model, _ = programs(trainer.net, cfg)
        prior_rollouts(model, trainer.val.inputs[:8], value, chunk_size=None)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": base / 1024}))
"""


def measure(mode, value, overrides) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(value), json.dumps(overrides)],
                       capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise SystemExit(f"child failed ({mode} {value}): {r.stderr.strip().splitlines()[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    overrides = ["pyro_validation=false"]
    if args.quick:
        overrides += ["d_model=32", "n_layers=1", "batch_size=8"]
        args.depths, args.widths = [2, 4], [4, 16]
    base = measure("baseline", 0, overrides)
    train = {d: measure("train", d, overrides) for d in args.depths}
    infer = {n: measure("infer", n, overrides) for n in args.widths}
    lines = ["nqueens-8, `cpu` preset size; peak resident memory of a fresh process (MB).", "",
             f"Baseline (imports, data, model, optimizer; no step): {base['peak_mb']:.0f} MB.", "",
             "| training, N_sup | peak (MB) | above baseline (MB) |", "|---|---|---|"]
    lines += [f"| {d} | {m['peak_mb']:.0f} | {m['peak_mb'] - base['peak_mb']:.0f} |" for d, m in train.items()]
    lines += ["", "| inference, trajectories (8 inputs x N) | peak (MB) | above baseline (MB) |",
              "|---|---|---|"]
    lines += [f"| 8 x {n} | {m['peak_mb']:.0f} | {m['peak_mb'] - base['peak_mb']:.0f} |" for n, m in infer.items()]
    body = "\n".join(lines)
    print(body)
    write_section("memory_depth", "Memory against depth and width", body, quick=args.quick)
    lo, hi = train[min(train)]["peak_mb"], train[max(train)]["peak_mb"]
    print(result_line(f"peak{max(train)}_over_peak{min(train)}", hi / lo, "<=1.10", hi / lo <= 1.10))


if __name__ == "__main__":
    main()
