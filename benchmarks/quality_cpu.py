"""GRAM against the deterministic baseline on CPU, side by side: same code, data, seeds and
training wall-clock; judged on PRIOR rollouts of held-out data.

    python benchmarks/quality_cpu.py                         # all three tasks, 2 seeds
    python benchmarks/quality_cpu.py --tasks nqueens-8 --minutes 15 --seeds 0
    python benchmarks/quality_cpu.py --task-minutes sudoku-4-unconditional=6 --out runs/quality
    python benchmarks/quality_cpu.py --quick

Tasks: nqueens-8 (accuracy, coverage@20), sudoku-4 unconditional (validity, coverage of the
288 grids from 2,000 samples), coloring-8 (conflict edges, coverage@20). Each task writes its
own section of docs/RESULTS.md, with the paper's figures beside ours, labelled as the paper's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, result_line, write_section  # noqa: E402
from _runs import mean_sd, train_and_evaluate  # noqa: E402

PAPER = json.loads((ROOT.parent / "shared" / "paper_results.json").read_text()) \
    if (ROOT.parent / "shared" / "paper_results.json").exists() else {}


def run_unconditional(name, out, task, minutes, seed, deterministic, samples, extra):
    from gram_pyro.config import make_config
    from gram_pyro.generate import generate
    from gram_pyro.train import Trainer

    run = out / f"{name}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = make_config("cpu", extra, task=task, unconditional=True, seed=seed, max_minutes=minutes,
                      deterministic=deterministic or None)
    result = Trainer(cfg, run, progress=False).fit()
    report = generate(run, samples, seed=seed)[0]
    report["train_steps"] = result["step"]
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["nqueens-8", "sudoku-4-unconditional", "coloring-8"])
    p.add_argument("--minutes", type=float, default=4.0, help="training minutes per run")
    p.add_argument("--task-minutes", action="append", default=[], metavar="TASK=MIN",
                   help="a different budget for one task (both models get it), e.g. "
                        "sudoku-4-unconditional=6")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    extra, limit, gen_samples, minutes = [], None, 2000, args.minutes
    if args.quick:
        extra, limit, gen_samples, minutes = ["d_model=32", "n_layers=1", "eval_inputs=8"], 10, 50, 0.05
        args.tasks = [t.replace("nqueens-8", "nqueens-6") for t in args.tasks]
        args.seeds = args.seeds[:1]
    out = args.out or Path(tempfile.mkdtemp(prefix="gram-quality-"))
    per_task = {}  # --quick ignores the per-task budgets
    for item in [] if args.quick else args.task_minutes:
        name, sep, value = item.partition("=")
        try:
            per_task[name] = float(value)
        except ValueError:
            p.error(f"--task-minutes takes TASK=MIN, got {item!r}")
    met = True
    for task in args.tasks:
        budget = per_task.get(task, minutes)
        rows = {}
        for label, det in (("GRAM", False), ("deterministic", True)):
            for seed in args.seeds:
                if task.endswith("-unconditional"):
                    r = run_unconditional(label, out / task, task.removesuffix("-unconditional"),
                                          budget, seed, det, gen_samples, extra)
                    print(f"{task} {label} seed {seed}: valid {100 * r['valid']:.1f}% "
                          f"coverage {100 * r.get('coverage', float('nan')):.1f}%", flush=True)
                else:
                    r = train_and_evaluate(label, out / task, task=task, minutes=budget, seed=seed,
                                           overrides=extra, deterministic=det, limit=limit)
                    print(f"{task} {label} seed {seed}: acc {100 * r['sample_accuracy']:.1f}% "
                          f"cov@20 micro {100 * r['coverage_micro']:.1f}%", flush=True)
                rows.setdefault(label, []).append(r)
        body = table(task, rows, budget, args.seeds, gen_samples)
        print(body)
        # one section per task and budget: a 15-minute acceptance run and a short multi-seed
        # table of the same task both stay in RESULTS
        write_section(f"quality_cpu_{task}_{budget:g}min",
                      f"GRAM vs deterministic baseline on CPU: {task}, {budget:g} minutes per run",
                      body, quick=args.quick)
        if not task.endswith("-unconditional"):
            gap = (sum(r["coverage_micro"] for r in rows["GRAM"]) -
                   sum(r["coverage_micro"] for r in rows["deterministic"])) / len(args.seeds)
            met &= gap >= 0.2
            print(result_line(f"{task}_coverage_gap", gap, ">=0.2", gap >= 0.2))
    print(result_line("all_gaps_met", float(met), "1", met))


def table(task, rows, minutes, seeds, gen_samples) -> str:
    head = (f"`cpu` preset, {minutes:g} training minutes per run, seeds {seeds}; mean ± sd over "
            "seeds, in % (distinct boards: one count per seed); every figure from prior rollouts "
            "(the model never sees the answer) run for the whole supervision budget (no ACT).\n\n")
    if task.endswith("-unconditional"):
        lines = [f"| model | valid ({gen_samples} samples) | distinct boards | unique fraction | "
                 "coverage of all grids | steps |", "|---|---|---|---|---|---|"]
        for label, rs in rows.items():
            distinct = [round(r["unique_fraction"] * r["samples"]) for r in rs]
            lines.append(f"| {label} | {mean_sd([r['valid'] for r in rs])} | "
                         f"{' / '.join(map(str, distinct))} | "
                         f"{mean_sd([r['unique_fraction'] for r in rs])} | "
                         f"{mean_sd([r.get('coverage', float('nan')) for r in rs])} | "
                         f"{int(sum(r['train_steps'] for r in rs) / len(rs))} |")
        paper = PAPER.get("unconditional_sudoku_validity", {})
        note = ("\n\nPaper (9x9 Sudoku, full scale, for reference only): " +
                ", ".join(f"{k} {v}% valid" for k, v in paper.items())) if paper else ""
        return head + "\n".join(lines) + note
    conflicts = "conflicts_per_sample" in next(iter(rows.values()))[0]
    lines = ["| model | sample accuracy | LPRM best-of-20 | coverage@20 micro | coverage@20 macro "
             "| identical samples | steps |" + (" conflict edges per sample |" if conflicts else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if conflicts else "")]
    for label, rs in rows.items():
        lines.append(f"| {label} | {mean_sd([r['sample_accuracy'] for r in rs])} | "
                     f"{mean_sd([r['accuracy']['lprm'] for r in rs])} | "
                     f"{mean_sd([r['coverage_micro'] for r in rs])} | "
                     f"{mean_sd([r['coverage_macro'] for r in rs])} | "
                     f"{mean_sd([r['identical_samples_fraction'] for r in rs])} | "
                     f"{int(sum(r['train_steps'] for r in rs) / len(rs))} |")
        if conflicts:
            lines[-1] += f" {sum(r['conflicts_per_sample'] for r in rs) / len(rs):.2f} |"
    key = {"nqueens-8": "nqueens_8", "nqueens-10": "nqueens_10", "coloring-8": "coloring_8",
           "coloring-10": "coloring_10"}.get(task)
    note = ""
    if key and key in PAPER:
        note = "\n\nPaper (full scale, GPU; for reference only, not our measurement): " + "; ".join(
            f"{m} " + " / ".join(f"{k} {v}" for k, v in vals.items()) for m, vals in PAPER[key].items())
    return head + "\n".join(lines) + note


if __name__ == "__main__":
    main()
