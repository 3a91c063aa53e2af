"""Width: N trajectories in one batched pass against N single-trajectory passes.

    python benchmarks/width_scaling.py            # cpu preset size, N in 1 4 16 32 64
    python benchmarks/width_scaling.py --quick

Both paths run the same model (the ``cpu`` preset's size, untrained: speed does not depend on
the weights) on the same inputs for the full supervision budget. The ratio batched/sequential
at N=32 is the goal (<= 0.5). Also reported: trajectory-steps per second when sampling, against
the training throughput of the same model (supervision steps x batch per second).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyro  # noqa: E402
import torch  # noqa: E402

from _report import result_line, write_section  # noqa: E402
from gram_pyro.build import build_net  # noqa: E402
from gram_pyro.config import make_config  # noqa: E402
from gram_pyro.inference import prior_rollouts  # noqa: E402
from gram_pyro.tasks import get_task  # noqa: E402
from gram_pyro.build import programs  # noqa: E402
from gram_pyro.train import Trainer  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--inputs", type=int, default=1,
                   help="puzzles per pass (1: a single pass is exactly one trajectory)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    overrides = []
    if args.quick:
        args.widths, args.inputs, args.repeats = [1, 4, 8], 2, 1
        overrides = ["d_model=32", "n_layers=1"]
    cfg = make_config("cpu", overrides, task="nqueens-8")
    task = get_task(cfg.task)
    torch.manual_seed(0)
    net = build_net(task, cfg).eval()
    model, _ = programs(net, cfg)
    x = task.build(seed=0).test.inputs[: args.inputs]
    pyro.set_rng_seed(0)
    rows = []
    for n in args.widths:
        batched = timed(lambda: prior_rollouts(model, x, n), args.repeats)
        sequential = timed(lambda: [prior_rollouts(model, x, 1) for _ in range(n)], args.repeats)
        traj_steps = n * len(x) * cfg.n_supervision / batched
        rows.append((n, batched, sequential, batched / sequential, traj_steps))
        print(f"N={n:<3} batched {batched:.3f}s  sequential {sequential:.3f}s  "
              f"ratio {batched / sequential:.2f}  {traj_steps:.0f} trajectory-steps/s", flush=True)
    # training throughput of the same model: supervision steps x batch per second
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(make_config("cpu", overrides, task="nqueens-8"), Path(tmp) / "r", progress=False)
        trainer.train_batch()
        per_batch = timed(trainer.train_batch, args.repeats)
    train_rate = cfg.n_supervision * cfg.batch_size / per_batch
    lines = [f"nqueens-8, `cpu` preset size (D={cfg.d_model}, {cfg.n_layers} {cfg.block} layers, "
             f"K={cfg.k_low}, T={cfg.t_high}, N_sup={cfg.n_supervision}), {len(x)} inputs per pass, "
             f"median of {args.repeats}.", "",
             "| N | batched (s) | N single passes (s) | ratio | trajectory-steps/s (batched) |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {b:.3f} | {s:.3f} | {r:.2f} | {t:.0f} |" for n, b, s, r, t in rows]
    lines += ["", f"Training throughput of the same model: {train_rate:.0f} example-steps/s "
                  f"(batch {cfg.batch_size} x {cfg.n_supervision} supervision steps per "
                  f"{per_batch:.2f}s); sampling at the largest N runs "
                  f"{rows[-1][4] / train_rate:.1f}x that."]
    body = "\n".join(lines)
    print(body)
    write_section("width_scaling", "Width: batched trajectories vs single passes", body, quick=args.quick)
    target = [r for r in rows if r[0] == 32] or rows[-1:]
    ratio = target[0][3]
    print(result_line(f"ratio_at_N{target[0][0]}", ratio, "<=0.5", ratio <= 0.5))


if __name__ == "__main__":
    main()
