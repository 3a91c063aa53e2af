"""Unconditional generation from a trained p(x) run: validity, diversity and coverage against the
number of supervision steps (depth), from the same number of samples; and with the LPRM choosing
each board among K trajectories (width, K times the compute).

    python benchmarks/generation.py --run runs/shidoku --samples 2000 --steps 4 8 16
    python benchmarks/generation.py --run runs/shidoku --steps 16 --best-of 1 4
    python benchmarks/generation.py --quick                   # trains a tiny run first

Goals (issue #6, CPU): Shidoku >= 99% valid over 2,000 samples with >= 95% of the 288 grids
covered; 8-queens boards >= 95% valid. The RESULT line reports the best validity over depths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import tiny_run  # noqa: E402

GOALS = {"sudoku-4": (0.99, 0.95), "nqueens-8": (0.95, None)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a run trained with --unconditional")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--best-of", type=int, nargs="+", default=[1], metavar="K",
                   help="LPRM best of K trajectories per board (1: plain sampling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix of the RESULTS section (several runs per task)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from gram_pyro.checkpoint import load_checkpoint
    from gram_pyro.generate import generate

    if args.quick:
        args.run = tiny_run("sudoku-4", unconditional=True, eval_inputs=1)
        args.samples, args.steps, args.best_of = 100, [2, 4], [1, 2]
    if args.run is None:
        p.error("--run is required (or --quick)")
    meta = load_checkpoint(args.run)
    rows, reports = [], []
    for k in args.best_of:
        for steps in args.steps:
            r, *_ = generate(args.run, args.samples, seed=args.seed, max_steps=steps, best_of=k)
            reports.append(r)
            cov = f"{100 * r['coverage']:.1f}% of {r['space_size']}" if "coverage" in r else "n/a"
            rows.append(f"| {steps} | {k} | {100 * r['valid']:.2f}% | {r['distinct_valid']} | "
                        f"{100 * r['unique_fraction']:.1f}% | {cov} | {r['boards_per_second']:.0f} |")
            print(rows[-1], flush=True)
    task = reports[0]["task"]
    body = (f"{reports[0]['model']} run `{args.run}` ({task}, unconditional; trained "
            f"{meta.get('step', '?')} optimizer steps), {args.samples} samples per row from the "
            "blank input, every trajectory run for the given number of supervision steps (no "
            "ACT). \"LPRM best of K\": each board is the one of K trajectories with the highest "
            "LPRM value (K = 1: plain sampling); boards/s counts the boards kept. Validity is "
            "checked by the task's exact rules, which play no part in the choice.\n\n"
            "| supervision steps | LPRM best of K | valid | distinct valid boards | unique fraction "
            "| coverage | boards/s |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\nDistinct boards, valid or not, among the samples of each row: "
            + ", ".join(str(round(r["unique_fraction"] * r["samples"])) for r in reports) + ".")
    print(body)
    write_section(f"generation_{task}", f"Unconditional generation: {task}", body,
                  quick=args.quick, tag=args.tag)
    best = max(reports, key=lambda r: r["valid"])
    print(f"best: {best['best_of']} trajectories per board")
    valid_goal, cov_goal = GOALS.get(task, (0.95, None))
    met = best["valid"] >= valid_goal and (cov_goal is None or best.get("coverage", 0) >= cov_goal)
    print(result_line("best_validity", best["valid"], f">={valid_goal}", met))


if __name__ == "__main__":
    main()
