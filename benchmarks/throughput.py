"""Training throughput at the `cpu` preset: optimizer steps per second, the model FLOPs of one
step, and the CPU model-FLOP utilisation (MFU) against a large float32 matmul on the same threads.

    python benchmarks/throughput.py                          # nqueens-8, the cpu preset
    python benchmarks/throughput.py --task coloring-8 --set batch_size=128 --tag bs128
    python benchmarks/throughput.py --quick

One "step" is one optimizer step: one supervision step of one batch (the trainer takes N_sup of
them per batch). FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over whole
batches (forward and backward of the ELBO step, the prior chain and the critic) and divided by the
steps taken; they cover matrix products and attention, not elementwise work. The practical peak
is the best of a few 2048 x 2048 matmuls on the same torch threads, in the precision the run trains
at (float32, or bfloat16 under ``precision`` bf16 or auto where it resolves to bf16). MFU is FLOPs
per step x steps per second / peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402


def matmul_peak(size: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """Practical GEMM peak of this process's torch threads in ``dtype``, in FLOP/s."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def measure(task: str, overrides: list[str], batches: int) -> dict:
    from gram_pyro.config import make_config
    from gram_pyro.train import Trainer

    cfg = make_config("cpu", overrides, task=task)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run", progress=False)
    for _ in range(2):  # warm-up: allocator, first-call costs
        trainer.train_batch()
    with FlopCounterMode(display=False) as counter:
        before = trainer.step
        trainer.train_batch()
        flop_steps = trainer.step - before
    flops = counter.get_total_flops() / flop_steps
    times = []
    for _ in range(batches):
        before = trainer.step
        t0 = time.perf_counter()
        trainer.train_batch()
        times.append((time.perf_counter() - t0) / (trainer.step - before))
    per_step = statistics.median(times)
    return {"task": task, "overrides": overrides, "batch_size": cfg.batch_size,
            "n_supervision": cfg.n_supervision, "seconds_per_step": per_step,
            "steps_per_second": 1 / per_step, "flops_per_step": flops,
            "threads": torch.get_num_threads(), "precision": trainer.cfg.precision}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="nqueens-8")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batches", type=int, default=10, help="timed batches (median step time)")
    p.add_argument("--baseline", type=float, help="steps/s of the code before, for the ratio")
    p.add_argument("--tag", default="", help="suffix of the RESULTS section")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.task, args.batches = "nqueens-5", 2
        args.set = ["d_model=32", "n_layers=1", "batch_size=8", *args.set]
    r = measure(args.task, args.set, args.batches)
    dtype = torch.bfloat16 if r["precision"] == "bf16" else torch.float32
    size = 512 if args.quick else 2048
    peak = matmul_peak(size, dtype=dtype)
    mfu = r["flops_per_step"] * r["steps_per_second"] / peak
    body = (f"{r['task']}, `cpu` preset{' with ' + ', '.join(args.set) if args.set else ''} "
            f"(batch {r['batch_size']}, N_sup {r['n_supervision']}, trained in {r['precision']}), "
            f"{r['threads']} torch threads, median of {args.batches} batches after 2 warm-up "
            f"batches; the peak is a {size} x {size} matmul in the same precision.\n\n"
            f"| steps/s | ms/step | model GFLOP/step | achieved GFLOP/s | {r['precision']} matmul "
            "peak GFLOP/s | MFU |\n"
            "|---|---|---|---|---|---|\n"
            f"| {r['steps_per_second']:.2f} | {1000 * r['seconds_per_step']:.0f} | "
            f"{r['flops_per_step'] / 1e9:.2f} | "
            f"{r['flops_per_step'] * r['steps_per_second'] / 1e9:.1f} | {peak / 1e9:.1f} | "
            f"{100 * mfu:.1f}% |")
    if args.baseline:
        body += (f"\n\nAgainst the code before ({args.baseline:.2f} steps/s): "
                 f"{r['steps_per_second'] / args.baseline:.2f}x.")
    print(body)
    write_section(f"throughput_{r['task']}", f"Training throughput and CPU MFU: {r['task']}", body,
                  quick=args.quick, tag=args.tag)
    if args.baseline:
        ratio = r["steps_per_second"] / args.baseline
        print(result_line("speedup_vs_baseline", ratio, ">=1", ratio >= 1))
    else:
        print(result_line("mfu", mfu, ">0", mfu > 0))


if __name__ == "__main__":
    main()
