"""Time to quality on CPU: GRAM and the deterministic baseline at fixed wall-clock points.

    python benchmarks/time_to_quality.py --tasks nqueens-8 --points 3 8 15
    python benchmarks/time_to_quality.py --tasks nqueens-10 --points 3 8 15 30 --out runs/ttq
    python benchmarks/time_to_quality.py --tasks sudoku-4-unconditional --points 3 8 15
    python benchmarks/time_to_quality.py --quick

Each model trains once per seed at the `cpu` preset, for the last point's minutes of training
time (the first seed) or the last of the ``--two-seed-points`` (the other seeds), and the trainer
saves a snapshot of the run at every earlier point (config ``snapshot_minutes``); the same
seeds, data and budget go to both models. A snapshot at m minutes of a longer run is not the run
``--max-minutes m`` gives: the cosine learning-rate schedule spans the whole budget, so at m
minutes its rate is still high (a 3-minute N-Queens run with a constant rate measured 88.5% where
the cosine gave 95.1%). Snapshots are therefore lower bounds, labelled as such, and the points in
``--dedicated`` (by default the task's goal budget) get runs of their own. The final critic fit
is off here: nothing below reads the critic.

Every point is judged on prior rollouts of the held-out test split, which never see the answer:
20 samples per input at ``gram evaluate``'s defaults: every trajectory runs twice the trained
supervision steps (``gram_pyro.inference.default_steps``), no ACT; each table says how many steps
that was. Conditional tasks: sample accuracy,
micro and macro coverage@20, and for colouring the conflict edges, both per sample and summed
over the test set with one sample per input (the paper's count). Unconditional tasks:
``gram generate RUN -n 2000`` with its defaults, validity and the distinct valid boards.

Goals (issue #15, 2 CPU cores) stand in ``GOALS`` and are checked on the first seed's point
at the goal's budget, or the mean over seeds where there are several.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, result_line, write_section  # noqa: E402
from _runs import measure_run, train_run  # noqa: E402

PAPER = json.loads((ROOT.parent / "shared" / "paper_results.json").read_text()) \
    if (ROOT.parent / "shared" / "paper_results.json").exists() else {}

# task -> (minutes, {metric: (op, value)}, {metric: margin over the deterministic baseline})
GOALS = {
    "nqueens-8": (3, {"acc": (">=", 0.90), "cov_micro": (">=", 0.85)},
                  {"acc": 0.0, "cov_micro": 0.3}),
    "nqueens-10": (15, {"acc": (">=", 0.70), "cov_micro": (">=", 0.40)}, {"cov_micro": 0.2}),
    "coloring-8": (15, {"cov_micro": (">=", 0.70), "conflicts": ("<=", 0.2)}, {"cov_micro": 0.3}),
    "coloring-10": (15, {"cov_micro": (">=", 0.35)}, {"cov_micro": 0.2}),
    "sudoku-4-unconditional": (15, {"valid": (">=", 0.99), "distinct_valid": (">=", 274)}, {}),
}


def train(out: Path, task: str, deterministic: bool, seed: int, points: list[float],
          extra: list[str], reuse: bool = False) -> Path:
    """One run to the last point, with a snapshot at every earlier one."""
    overrides = ["critic_fit_steps=0", *extra]
    if len(points) > 1:
        overrides.append("snapshot_minutes=" + ",".join(f"{m:g}" for m in points[:-1]))
    return train_run(out, "deterministic" if deterministic else "GRAM", task=task,
                     minutes=points[-1], seed=seed, overrides=overrides,
                     deterministic=deterministic, reuse=reuse)


def point_dirs(run: Path, points: list[float]) -> dict[float, Path]:
    """Each point's loadable run folder: the snapshots, and the run itself at the last point."""
    out = {p: run / "snapshots" / f"{p:g}min" for p in points[:-1]}
    out[points[-1]] = run
    return out


def fmt(values: list[float], pct: bool) -> str:
    v = np.asarray(values, dtype=float) * (100 if pct else 1)
    digits = 1 if pct else 0 if all(float(x).is_integer() for x in values) else 2
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


COLUMNS = {  # metric -> (header, percent)
    "acc": ("sample accuracy", True), "cov_micro": ("coverage@20 micro", True),
    "cov_macro": ("coverage@20 macro", True), "conflicts": ("conflict edges per sample", False),
    "conflicts_total": ("conflict edges, test set, 1 sample per input", False),
    "valid": ("valid (2,000 samples)", True), "distinct_valid": ("distinct valid boards", False),
    "coverage": ("coverage of all boards", True), "steps": ("optimizer steps", False),
}


def depth_text(results: dict) -> str:
    """How many supervision steps the measured rollouts ran, against the trained N_sup."""
    pairs = sorted({(r["depth"], r["trained_steps"]) for rs in results.values()
                    for s in rs.values() for r in s.values() if "depth" in r})
    text = ", ".join(f"{d} supervision steps per trajectory (trained with {t}; gram evaluate's "
                     "default), no ACT" for d, t in pairs)
    return text or "gram generate's defaults"


def table(results: dict) -> str:
    metrics = [m for m in COLUMNS if any(m in r for rs in results.values() for s in rs.values()
                                         for r in s.values())]
    lines = ["| minutes | model | seeds | " + " | ".join(COLUMNS[m][0] for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    keys = sorted({(p, r["budget"]) for rs in results.values() for s in rs.values()
                   for p, r in s.items()})
    for point, budget in keys:
        label = f"{point:g}" if point == budget else f"{point:g} of {budget:g}"
        for model, rs in results.items():
            runs = [s[point] for s in rs.values() if s.get(point, {}).get("budget") == budget]
            if not runs:
                continue
            cells = [fmt([r[m] for r in runs], COLUMNS[m][1]) for m in metrics]
            lines.append(f"| {label} | {model} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling(results: dict) -> dict | None:
    """The evaluated inputs' coverage ceiling (the same in every record: one split), if any."""
    return next((r for rs in results.values() for s in rs.values() for r in s.values()
                 if "ceiling_micro" in r), None)


def ceiling_note(results: dict) -> str:
    """The coverage 20 independent samples can expect at best on the evaluated inputs."""
    found = ceiling(results)
    if found is None:
        return ""
    return (f"No sampler of 20 independent draws per input can expect more than micro "
            f"{100 * found['ceiling_micro']:.1f}% and macro {100 * found['ceiling_macro']:.1f}% "
            "coverage@20 on these inputs: that is 20 uniform draws over each input's completions "
            "(`metrics.coverage_ceiling`). Inputs with more than a handful of completions keep "
            "any model below 100%.")


def verdict(task: str, results: dict) -> tuple[bool, str]:
    minutes, goals, margins = GOALS[task]
    gram = [r[minutes] for r in results["GRAM"].values() if minutes in r]
    det = [r[minutes] for r in results["deterministic"].values() if minutes in r]
    if not gram:
        return False, f"no GRAM point at {minutes:g} minutes"
    mean = {m: float(np.mean([r[m] for r in gram])) for m in gram[0]}
    dmean = {m: float(np.mean([r[m] for r in det])) for m in det[0]} if det else {}
    ok, parts = True, []
    for m, (op, value) in goals.items():
        good = mean[m] >= value if op == ">=" else mean[m] <= value
        ok &= good
        beyond = m == "cov_micro" and "ceiling_micro" in mean and value > mean["ceiling_micro"]
        parts.append(f"{m} {mean[m]:.4g} {op} {value:g}: {'met' if good else 'missed'}"
                     + (f" (the goal lies above the {mean['ceiling_micro']:.4g} that 20 "
                        "independent samples can expect)" if beyond else ""))
    for m, margin in margins.items():
        if m in dmean:
            good = mean[m] >= dmean[m] + margin
            ok &= good
            parts.append(f"{m} {mean[m]:.4g} >= baseline {dmean[m]:.4g} + {margin:g}: "
                         f"{'met' if good else 'missed'}")
    return ok, "; ".join(parts)


def plot(task: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gram_pyro import plots

    metrics = ["valid", "coverage"] if task.endswith("-unconditional") else ["acc", "cov_micro"]
    best = ceiling(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for ax, m in zip(axes, metrics):
        for model, rs in results.items():
            points = sorted({p for r in rs.values() for p in r})
            vals = [[rs[s][p][m] for s in rs if p in rs[s]] for p in points]
            mean = [100 * np.mean(v) for v in vals]
            ax.plot(points, mean, marker="o", label=model)
            for p, v in zip(points, vals):
                ax.scatter([p] * len(v), [100 * x for x in v], s=10, color="grey", alpha=0.6)
        if m == "cov_micro" and best is not None:
            ax.axhline(100 * best["ceiling_micro"], ls="--", color="grey",
                       label="20 independent samples, at best")
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel(COLUMNS[m][0] + " (%)")
        ax.set_ylim(0, 100)
        ax.legend()
    fig.suptitle(f"{task}: time to quality (prior rollouts, test split)")
    plots.save(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["nqueens-8"])
    p.add_argument("--points", type=float, nargs="+", default=[3, 8, 15],
                   help="training minutes at which to measure (the last is the run's budget)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--two-seed-points", type=float, nargs="+", default=[3, 8],
                   help="the points every seed reaches; the first seed alone runs on to the last")
    p.add_argument("--dedicated", type=float, nargs="*", default=None,
                   help="points measured by runs of exactly that budget rather than snapshots "
                        "(default: the task's goal budget)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both models (a recipe under test)")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the test inputs")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", action="store_true",
                   help="evaluate the finished runs already in --out whose config matches instead "
                        "of training them again (after an interrupted or re-measured benchmark)")
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    gen_samples = 2000
    if args.quick:
        args.tasks = [t.replace("nqueens-8", "nqueens-5") for t in args.tasks]
        args.points, args.two_seed_points, args.seeds = [0.02, 0.04], [0.02], args.seeds[:2]
        args.set = ["d_model=32", "n_layers=1", "eval_inputs=8", *args.set]
        args.limit, gen_samples = 8, 50
    out = args.out or Path(tempfile.mkdtemp(prefix="gram-ttq-"))
    all_met, checked = True, 0
    for task in args.tasks:
        results = {"GRAM": {}, "deterministic": {}}
        dedicated = set(args.dedicated if args.dedicated is not None else
                        [GOALS[task][0]] if task in GOALS else [])
        for model in results:
            for i, seed in enumerate(args.seeds):
                points = sorted(args.points if i == 0 else
                                [q for q in args.points if q in args.two_seed_points])
                if not points:
                    continue
                det = model == "deterministic"
                main_points = [q for q in points if q not in dedicated or q == points[-1]]
                folders = {q: (d, points[-1]) for q, d in point_dirs(
                    train(out / task, task, det, seed, main_points, args.set, args.reuse),
                    main_points).items()}
                for q in sorted(dedicated & set(points[:-1])):
                    folders[q] = (train(out / task / f"{q:g}min", task, det, seed, [q], args.set,
                                        args.reuse), q)
                results[model][seed] = {q: {**measure_run(d, task, seed, args.limit, gen_samples),
                                            "budget": budget}
                                        for q, (d, budget) in sorted(folders.items())}
                print(task, model, seed, json.dumps(results[model][seed]), flush=True)
        tested = f"a seeded subset of {args.limit} test inputs" if args.limit else "the test split"
        body = (f"`cpu` preset{' with ' + ', '.join(args.set) if args.set else ''}; the deterministic "
                "baseline is the same code with the noise off, trained with the same seeds, data "
                "and budget. Minutes are training time on 2 CPU cores; a row \"m of M\" is a "
                "snapshot m minutes into an M-minute run (a lower bound on an m-minute run, whose "
                "learning rate would have decayed by then); mean ± sd over the seeds listed; prior "
                f"rollouts of {tested}, 20 samples per input, {depth_text(results)}.\n\n"
                + table(results))
        note = ceiling_note(results)
        if note:
            body += "\n\n" + note
        figure = ROOT / "docs" / "figures" / f"ttq_{task}{'_' + args.tag if args.tag else ''}.png"
        if not args.quick:
            plot(task, results, figure)
            body += f"\n\n![time to quality, {task}](figures/{figure.name})"
        if task in GOALS and not args.quick:
            ok, why = verdict(task, results)
            body += f"\n\nGoal at {GOALS[task][0]:g} minutes: {why}."
        print(body)
        write_section(f"time_to_quality_{task}", f"Time to quality on CPU: {task}", body,
                      quick=args.quick, tag=args.tag)
        if task in GOALS and not args.quick:
            ok, why = verdict(task, results)
            all_met &= ok
            checked += 1
            print(result_line(f"{task}_goal", float(ok), "1", ok))
    met = all_met and checked > 0  # --quick checks no goal, so it never reports one met
    print(result_line("all_goals_met", float(met), "1", met))


if __name__ == "__main__":
    main()
