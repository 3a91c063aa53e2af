"""The KL weight beta at the `cpu` preset's size: the paper's value against larger ones, side by side.

The paper's betas (0.07 for N-Queens 8x8, 0.05 for unconditional Sudoku) are for D=512, T=3,
N_sup=16 on GPUs. This script trains the `cpu` preset with each beta for the same wall-clock and
judges PRIOR rollouts: accuracy and coverage@20 on held-out N-Queens inputs, and validity and
coverage of the 288 grids for unconditional Shidoku (2,000 samples).

    python benchmarks/beta.py --minutes 3
    python benchmarks/beta.py --minutes 4 --tasks sudoku-4
    python benchmarks/beta.py --minutes 5 --tasks coloring-8 --betas 0.5 1 2 4
    python benchmarks/beta.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402

CASES = [("nqueens-8", False, 0.07), ("sudoku-4", True, 0.05), ("coloring-8", False, 0.5)]


def run(task, unconditional, beta, minutes, seed, out, extra, limit, samples):
    from gram_pyro.config import make_config
    from gram_pyro.evaluate import evaluate_run
    from gram_pyro.generate import generate
    from gram_pyro.train import Trainer

    folder = out / f"{task}{'-u' if unconditional else ''}-beta{beta}-seed{seed}"
    cfg = make_config("cpu", [*extra, f"beta={beta}"], task=task, unconditional=unconditional or None,
                      seed=seed, max_minutes=minutes)
    steps = Trainer(cfg, folder, progress=False).fit()["step"]
    if unconditional:
        r = generate(folder, samples, seed=seed)[0]
        return {"steps": steps, "first": r["valid"], "second": r.get("coverage", float("nan"))}
    r = evaluate_run(folder, samples=20, limit=limit, seed=seed, act=False)[0]
    return {"steps": steps, "first": r["sample_accuracy"], "second": r["coverage_micro"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tasks", nargs="+", choices=[c[0] for c in CASES], default=None,
                   help="only these cases (default: all)")
    p.add_argument("--betas", type=float, nargs="+", default=None,
                   help="betas to compare (default: the paper's, 1 and the cpu preset's)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from gram_pyro.config import Config

    preset_beta = Config.beta
    cases = [c for c in CASES if args.tasks is None or c[0] in args.tasks]
    cases, minutes, extra, limit, samples = cases, args.minutes, [], None, 2000
    if args.quick:
        cases = [("nqueens-6", False, 0.07), ("sudoku-4", True, 0.05)]
        minutes, extra, limit, samples = 0.05, ["d_model=32", "n_layers=1", "eval_inputs=8"], 10, 50
    out = args.out or Path(tempfile.mkdtemp(prefix="gram-beta-"))
    lines = ["| task | beta | prior accuracy or validity | coverage | steps |", "|---|---|---|---|---|"]
    better = True
    for task, unconditional, paper_beta in cases:
        results = {}
        betas = sorted(set(args.betas or (paper_beta, 1.0, preset_beta)) | {paper_beta})
        for beta in betas:
            r = run(task, unconditional, beta, minutes, args.seed, out, extra, limit, samples)
            results[beta] = r
            name = task + (" unconditional" if unconditional else "")
            label = f"{beta:g}" + (" (paper)" if beta == paper_beta else "") + \
                (" (cpu preset)" if beta == preset_beta else "")
            lines.append(f"| {name} | {label} | {100 * r['first']:.1f}% | {100 * r['second']:.1f}% | "
                         f"{r['steps']} |")
            print(lines[-1], flush=True)
        if preset_beta in results:
            better &= results[preset_beta]["first"] >= results[paper_beta]["first"]
    body = (f"`cpu` preset (D=64, T=2, N_sup=4), {minutes:g} training minutes per run, seed "
            f"{args.seed}; prior rollouts only. N-Queens and colouring: accuracy and micro "
            f"coverage@20 on the test split; Shidoku: validity and coverage of the 288 grids over "
            f"{samples} samples. "
            "One seed: a screening run, not a tuned sweep.\n\n" + "\n".join(lines))
    print(body)
    write_section("beta" + "".join(f"_{c[0]}" for c in cases if args.tasks),
                  "KL weight beta at CPU scale: the paper's value against larger ones", body,
                  quick=args.quick)
    print(result_line("preset_beta_at_least_paper_beta", float(better), "1", better))


if __name__ == "__main__":
    main()
