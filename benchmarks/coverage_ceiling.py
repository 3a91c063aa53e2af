"""The coverage@N that N independent samples can expect at best, on each task's test split.

    python benchmarks/coverage_ceiling.py
    python benchmarks/coverage_ceiling.py --tasks coloring-8 coloring-10 --samples 20 100

An input with K valid completions, sampled N times independently, expects at most
K (1 - (1 - 1/K)^N) distinct completions, reached by the uniform distribution over them
(``gram_pyro.metrics.coverage_ceiling``). Every model here samples its N trajectories of an input
independently, so this bounds the coverage any of them can expect: where it lies below a
coverage goal, no training recipe reaches that goal on that split, and the figure to judge a
model by is its distance from the ceiling. The data are the cpu preset's (data seed 0, the task's
default sizes), the splits every benchmark evaluates on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from time_to_quality import GOALS  # noqa: E402


def simulated_micro(k: np.ndarray, n: int, reps: int, seed: int = 0) -> float:
    """Micro coverage@n of ``reps`` simulated uniform samplers: a check on the closed form."""
    rng = np.random.default_rng(seed)
    found = 0
    for kk in k[k > 0]:
        picks = np.sort(rng.integers(0, kk, (reps, n)), axis=1)
        found += int((np.diff(picks, axis=1) != 0).sum()) + reps  # distinct per row, summed
    return found / (reps * max(int(k.sum()), 1))


def micro_goal(task: str) -> float | None:
    """Issue #15's micro coverage@20 goal for ``task``, if it has one."""
    goal = GOALS.get(task, (0, {}, {}))[1].get("cov_micro")
    return goal[1] if goal else None


def ceiling_row(name: str, samples: list[int]) -> dict:
    from gram_pyro.build import run_data
    from gram_pyro.config import make_config
    from gram_pyro.metrics import coverage_ceiling
    from gram_pyro.tasks import get_task

    cfg = make_config("cpu", [f"task={name}"])
    task = get_task(cfg.task, unconditional=cfg.unconditional)
    split = run_data(task, cfg, progress=True).test
    k = np.asarray(split.num_completions)
    return {"task": name, "inputs": len(split), "mean": float(k.mean()), "max": int(k.max()),
            "over": {n: float(np.mean(k > n)) for n in samples},
            "ceiling": {n: coverage_ceiling(split, n) for n in samples},
            "simulated": {n: simulated_micro(k, n, reps=50) for n in samples}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+",
                   default=["nqueens-8", "nqueens-10", "coloring-8", "coloring-10", "sudoku-4"])
    p.add_argument("--samples", type=int, nargs="+", default=[20, 100],
                   help="the N of coverage@N (20: every quality benchmark's)")
    p.add_argument("--quick", action="store_true", help="small tasks only; RESULTS untouched")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = ["nqueens-5", "coloring-5"]
    if any(n < 1 for n in args.samples):
        sys.exit("coverage_ceiling: --samples takes positive counts")
    rows = [ceiling_row(t, args.samples) for t in args.tasks]
    head = ["task", "test inputs", "completions per input: mean / max"]
    for n in args.samples:
        head += [f"inputs with more than {n}", f"ceiling micro@{n}", f"ceiling macro@{n}"]
    head.append("issue #15 micro@20 goal")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], str(r["inputs"]), f"{r['mean']:.2f} / {r['max']}"]
        for n in args.samples:
            c = r["ceiling"][n]
            cells += [f"{100 * r['over'][n]:.1f}%", f"{100 * c['micro']:.1f}%",
                      f"{100 * c['macro']:.1f}%"]
        goal = micro_goal(r["task"])
        if goal and 20 in r["ceiling"]:
            reach = "within" if goal <= r["ceiling"][20]["micro"] else "above"
            cells.append(f"{100 * goal:.0f}% ({reach} the ceiling)")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    body = ("Test splits of the cpu preset's data (data seed 0). The ceiling is the coverage N "
            "independent uniform draws over each input's completions expect; no sampler of N "
            "independent draws per input (GRAM's prior rollouts, the baseline) expects more "
            "(`gram_pyro.metrics.coverage_ceiling`). Micro pools the found counts over inputs, "
            "so the inputs with many completions weigh most.\n\n" + "\n".join(lines))
    print(body)
    write_section("coverage_ceiling", "Coverage ceilings of the test splits", body, quick=args.quick)
    for r in rows:  # the closed form against 50 simulated uniform samplers
        for n in args.samples:
            err = abs(r["simulated"][n] - r["ceiling"][n]["micro"])
            print(result_line(f"{r['task']}_micro@{n}_closed_form_vs_simulated", err, "<0.01",
                              err < 0.01))
    for r in rows:  # whether a coverage goal of issue #15 is reachable by independent samples
        goal = micro_goal(r["task"])
        if goal and 20 in r["ceiling"]:
            room = r["ceiling"][20]["micro"] - goal
            print(result_line(f"{r['task']}_ceiling_minus_goal", room, ">=0", room >= 0))


if __name__ == "__main__":
    main()
