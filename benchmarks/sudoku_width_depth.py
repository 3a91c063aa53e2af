"""Width x depth at inference (the paper's Figure 4 at CPU scale) and selection with evidence.

On a trained run: the accuracy of every way of choosing one answer out of N prior trajectories,
against N and the number of supervision steps; then which choice wins at one N, with paired
bootstrap intervals over puzzles.

    python benchmarks/sudoku_width_depth.py --run runs/s9 --baseline runs/s9-det --limit 300
    python benchmarks/sudoku_width_depth.py --run runs/s9 --samples-grid 1 4 16 32 --depths 1 4 16
    python benchmarks/sudoku_width_depth.py --quick   # trains a tiny sudoku-4 run and baseline

Meant for sudoku-9, but any conditional task works: the task is the run's.

Width x depth: ONE prior rollout of max(N) trajectories per test input for max(depth) supervision
steps, recording every trajectory's decoded answer and LPRM value after every step. The cell
(N, depth) reads the first N trajectories after that step, so every cell is judged on the same
samples, and a cell costs N x depth trajectory-steps whichever method chooses. The methods are
those of ``gram_pyro.select``: ``first`` (a single sample, which does not depend on N: its rows
repeat), ``vote``, ``lprm`` (best-of-N) and ``weighted``; pass@N (some one of the N is correct)
is the oracle bound that no selection from those N can pass. Depths may exceed the trained N_sup.
ACT is off everywhere: every trajectory runs the whole budget.

Selection with evidence, at N = --select-n (default 20) and the trained N_sup: the four methods
above on the first N trajectories of the same rollout (widened to N if the grid stops short of
it), and LPRM-guided SMC (``gram_pyro.smc``). Equal compute: SMC runs N particles for the same
N_sup supervision steps as the N independent trajectories the other methods read (its resampling
is a gather), so every method costs N x N_sup trajectory-steps. Each difference between two
methods gets a paired bootstrap over puzzles (--boot resamples of the puzzle indices with
replacement, the same indices for both methods): the mean difference and the 2.5 / 97.5
percentiles. The LPRM's within-input AUC (its value for correct against incorrect trajectories of
the same input, averaged over the inputs that have both; ``metrics.within_auc``) says how well it
ranks what selection chooses from.

With --baseline (a deterministic run of the same task), its accuracy against depth on the same
puzzles (one trajectory: its samples are identical) stands beside GRAM's single sample.

Writes a heat map (one panel per method, accuracy % in each cell) next to the run and, unless
--quick, under docs/figures; the numbers also go to a JSON file (--json, default next to the run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, result_line, write_section  # noqa: E402
from _runs import train_run  # noqa: E402
from selection import critic_note  # noqa: E402
from gram_pyro.select import METHODS  # noqa: E402

PASS = "pass@N"
LABELS = {"first": "single sample", "vote": "majority vote", "lprm": "LPRM best-of-N",
          "weighted": "LPRM-weighted vote", "smc": "LPRM-guided SMC", PASS: "pass@N (oracle)"}
TINY = ["d_model=32", "n_layers=1", "steps=20", "eval_inputs=8", "critic_fit_steps=5",
        "critic_fit_inputs=32"]  # tiny_run's size, with a token critic fit


# -- measuring ------------------------------------------------------------------------------------

def load(run, limit: int | None, device: str):
    """``(task, cfg, model, test split)`` of a trained run (its seeded subset of ``limit``)."""
    from gram_pyro.build import programs, run_data
    from gram_pyro.checkpoint import load_run

    task, cfg, net = load_run(run, device=device)
    part = run_data(task, cfg).split("test").sample(limit)
    return task, cfg, programs(net, cfg)[0], part


def rollout(model, inputs, width: int, depth: int, seed: int):
    """One prior rollout, ``width`` trajectories per input for ``depth`` supervision steps (no
    ACT), every step recorded; returns it and its wall seconds."""
    import pyro

    from gram_pyro.inference import prior_rollouts

    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    traj = prior_rollouts(model, inputs, width, max_steps=depth, act=False, record=True)
    return traj, time.perf_counter() - start


def step_correct(task, inputs, step_answers) -> np.ndarray:
    """``[S, M, N]``: is trajectory n of input m correct after step s (valid, keeps the givens)."""
    _, m, n, a = step_answers.shape
    rows = np.repeat(inputs, n, axis=0)
    return np.stack([task.is_correct(rows, step.reshape(m * n, a)).reshape(m, n)
                     for step in step_answers])


def chosen_correct(task, inputs, answers, values, method: str) -> np.ndarray:
    """Per input: is the answer ``method`` chooses among ``answers`` ``[M, N, A]`` correct."""
    from gram_pyro.select import select

    return task.is_correct(inputs, select(task, answers, values, method))


def width_depth_grid(task, inputs, traj, ok, ns, depths) -> dict[str, np.ndarray]:
    """Accuracy ``[len(ns), len(depths)]`` of every selection method and of pass@N, each cell from
    the first N trajectories after ``depth`` steps of the one rollout."""
    from gram_pyro import metrics
    from gram_pyro.select import select

    grid = {name: np.zeros((len(ns), len(depths))) for name in (*METHODS, PASS)}
    for j, d in enumerate(depths):
        answers, values = traj.step_answers[d - 1], traj.step_values[d - 1]
        for i, n in enumerate(ns):
            for method in METHODS:
                chosen = select(task, answers[:, :n], values[:, :n], method)
                grid[method][i, j] = metrics.accuracy(task, inputs, chosen)
            grid[PASS][i, j] = ok[d - 1][:, :n].any(1).mean()
    return grid


def smc_correct(model, task, inputs, n: int, steps: int, seed: int):
    """LPRM-guided SMC with ``n`` particles for ``steps`` supervision steps: per input, is the
    highest-valued final particle correct; with the resampling events and wall seconds."""
    import pyro

    from gram_pyro.smc import lprm_smc

    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    smc = lprm_smc(model, inputs, n, max_steps=steps)
    seconds = time.perf_counter() - start
    return chosen_correct(task, inputs, smc.answers, smc.values, "lprm"), smc.resampled, seconds


def baseline_by_depth(run, task, inputs, depths, seed: int, device: str) -> dict:
    """A deterministic run's per-input correctness ``[len(depths), M]`` on ``inputs`` (one
    trajectory: without noise all samples are the same), with what the report says about it."""
    from gram_pyro.build import programs
    from gram_pyro.checkpoint import load_run
    from gram_pyro.errors import UserError

    btask, bcfg, net = load_run(run, device=device)
    if btask.name != task.name or bcfg.unconditional:
        raise UserError(f"--baseline {str(run)!r} is a {btask.name} run; the run is {task.name}")
    traj, _ = rollout(programs(net, bcfg)[0], inputs, 1, max(depths), seed)
    correct = np.stack([task.is_correct(inputs, traj.step_answers[d - 1][:, 0]) for d in depths])
    return {"correct": correct, "n_supervision": bcfg.n_supervision,
            "deterministic": bool(bcfg.deterministic)}


def paired_bootstrap(correct: dict[str, np.ndarray], boot: int, seed: int) -> list[dict]:
    """For every pair of methods (``method`` listed after ``versus``): the mean over puzzles of
    ``correct[method] - correct[versus]`` and its 95% interval, the 2.5 and 97.5 percentiles of
    that mean over ``boot`` resamples of the puzzle indices with replacement (the same resampled
    indices for both methods of a pair, and for every pair)."""
    m = len(next(iter(correct.values())))
    idx = np.random.default_rng(seed).integers(0, m, size=(boot, m))
    rows = []
    for versus, method in itertools.combinations(correct, 2):
        d = np.asarray(correct[method], float) - np.asarray(correct[versus], float)
        lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
        rows.append({"method": method, "versus": versus, "diff": float(d.mean()),
                     "lo": float(lo), "hi": float(hi)})
    return rows


def difference(rows: list[dict], a: str, b: str) -> tuple[float, float, float]:
    """``(a - b, lo, hi)`` from :func:`paired_bootstrap` rows, whichever way the pair was listed."""
    for r in rows:
        if (r["method"], r["versus"]) == (a, b):
            return r["diff"], r["lo"], r["hi"]
        if (r["method"], r["versus"]) == (b, a):
            return -r["diff"], -r["hi"], -r["lo"]
    raise KeyError((a, b))


def gain(after, before, boot: int, seed: int) -> tuple[float, float, float]:
    """``after - before`` (per-puzzle scores) with its paired-bootstrap 95% interval."""
    r = paired_bootstrap({"before": before, "after": after}, boot, seed)[0]
    return r["diff"], r["lo"], r["hi"]


# -- reporting ------------------------------------------------------------------------------------

def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def points(diff: float, lo: float, hi: float) -> str:
    return f"{100 * diff:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def depth_header(first: str, depths, trained: int) -> list[str]:
    cols = [f"{d} (trained)" if d == trained else str(d) for d in depths]
    return [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(depths)]


def grid_table(values: np.ndarray, ns, depths, trained: int) -> str:
    rows = [f"| {n} | " + " | ".join(pct(v) for v in row) + " |" for n, row in zip(ns, values)]
    return "\n".join(depth_header("N \\ supervision steps", depths, trained) + rows)


def depth_table(series: dict[str, tuple], depths, trained: int) -> str:
    """Rows of values against depth: ``series`` maps a label to ``(values, format)``."""
    rows = [f"| {label} | " + " | ".join("n/a" if v != v else fmt(v) for v in values) + " |"
            for label, (values, fmt) in series.items()]
    return "\n".join(depth_header("supervision steps", depths, trained) + rows)


def selection_table(acc: dict, pass_at_n: float, rows: list[dict], n: int, depth: int) -> str:
    head = [f"| selection (N = {n}, {depth} steps) | accuracy | minus single sample [95% CI] |",
            "|---|---|---|"]
    lines = [f"| {LABELS[m]} | {pct(a)} | "
             + ("" if m == "first" else points(*difference(rows, m, "first"))) + " |"
             for m, a in acc.items()]
    lines.append(f"| ({LABELS[PASS]}: some one of the N correct) | {pct(pass_at_n)} | |")
    pairs = ["| difference | points | 95% CI | interval excludes 0 |", "|---|---|---|---|"]
    pairs += [f"| {LABELS[r['method']]} - {LABELS[r['versus']]} | {100 * r['diff']:+.1f} | "
              f"[{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}] | "
              f"{'yes' if r['lo'] > 0 or r['hi'] < 0 else 'no'} |" for r in rows]
    return ("\n".join(head + lines) + "\n\nEvery pair (paired bootstrap over puzzles):\n\n"
            + "\n".join(pairs))


def verdict(acc: dict, rows: list[dict]) -> str:
    """Which method wins at the selection cell, and whether its interval against each other
    method excludes 0."""
    best = max(acc, key=acc.get)  # ties go to the method listed first (the cheaper one)
    parts = []
    for other in acc:
        if other != best:
            d, lo, hi = difference(rows, best, other)
            parts.append(f"against {LABELS[other]} {points(d, lo, hi)}, the interval "
                         + ("excludes 0" if lo > 0 else "includes 0: no clear win"))
    clear = all(difference(rows, best, o)[1] > 0 for o in acc if o != best)
    return (f"**{LABELS[best]} has the highest accuracy, {pct(acc[best])}**: " + "; ".join(parts)
            + (". It beats every other method with an interval excluding 0." if clear else
               ". It does not beat every other method with an interval excluding 0."))


def heatmap(grid: dict[str, np.ndarray], ns, depths, trained: int, title: str):
    """One panel per method: accuracy % of each (N, depth) cell, N up the y axis."""
    from gram_pyro import plots  # noqa: F401  (selects the headless backend)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grid), squeeze=False, constrained_layout=True,
                             figsize=(len(grid) * (1.2 + 0.5 * len(depths)), 1.6 + 0.4 * len(ns)))
    for ax, (name, acc) in zip(axes.flat, grid.items()):
        acc = 100 * acc
        image = ax.imshow(acc, origin="lower", vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i, j in np.ndindex(acc.shape):
            ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if acc[i, j] < 60 else "black")
        if trained in depths:  # the right edge of the trained depth's column
            ax.axvline(depths.index(trained) + 0.5, color="white", ls="--", lw=1)
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_yticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("supervision steps")
        ax.set_title(LABELS[name], fontsize=9)
    axes[0, 0].set_ylabel("samples N")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy (%)", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


# -- the script -----------------------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained GRAM run folder (conditional task)")
    p.add_argument("--baseline", type=Path, help="a deterministic-baseline run of the same task")
    p.add_argument("--samples-grid", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                   metavar="N", help="trajectories per input (rows of the grid)")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16], metavar="STEPS",
                   help="supervision steps (columns; the trained N_sup is always added)")
    p.add_argument("--select-n", type=int, default=20,
                   help="N of the selection table, its intervals and SMC")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the test inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--json", type=Path, help="where the numbers go (default: next to the run)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default="", help="suffix of the RESULTS section and figure names")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        out = Path(tempfile.mkdtemp(prefix="gram-width-depth-"))
        args.run = train_run(out, "tiny", task="sudoku-4", minutes=0, seed=args.seed,
                             overrides=TINY)
        args.baseline = train_run(out, "tiny-det", task="sudoku-4", minutes=0, seed=args.seed,
                                  overrides=TINY, deterministic=True)
        args.samples_grid, args.depths, args.select_n = [1, 2, 4, 8], [1, 2, 4, 8], 8
        args.limit, args.boot = 12, 200
    if args.run is None:
        p.error("--run is required (or --quick)")
    if min(args.samples_grid + args.depths + [args.select_n, args.boot]) < 1:
        p.error("--samples-grid, --depths, --select-n and --boot take positive integers")
    return args


def measure(args) -> dict:
    """Everything the report states: the grid, depth, width, selection with intervals, the AUC."""
    from gram_pyro import metrics
    from gram_pyro.errors import UserError

    task, cfg, model, part = load(args.run, args.limit, args.device)
    if cfg.unconditional:
        raise UserError(f"{args.run} is an unconditional run; this benchmark needs puzzles")
    inputs, trained = part.inputs, cfg.n_supervision
    ns, depths = sorted(set(args.samples_grid)), sorted(set(args.depths) | {trained})
    n_sel, at = args.select_n, trained - 1
    r = {"task": task, "cfg": cfg, "inputs": len(part), "trained": trained, "ns": ns,
         "depths": depths, "n_sel": n_sel, "width": max(ns[-1], n_sel)}

    traj, r["rollout_s"] = rollout(model, inputs, r["width"], depths[-1], args.seed)
    ok = step_correct(task, inputs, traj.step_answers)  # [S, M, width]
    print(f"rollout: {len(part)} inputs x {r['width']} trajectories x {depths[-1]} steps in "
          f"{r['rollout_s']:.1f} s", flush=True)
    r["grid"] = grid = width_depth_grid(task, inputs, traj, ok, ns, depths)

    # selection at (n_sel, trained): the four methods on the same trajectories, SMC at equal compute
    answers, values, hit = (traj.step_answers[at][:, :n_sel], traj.step_values[at][:, :n_sel],
                            ok[at][:, :n_sel])
    correct = {method: chosen_correct(task, inputs, answers, values, method) for method in METHODS}
    correct["smc"], r["resampled"], r["smc_s"] = smc_correct(model, task, inputs, n_sel, trained,
                                                             args.seed + 1)
    r["accuracy"] = {method: float(c.mean()) for method, c in correct.items()}
    r["pass_at_n"] = float(hit.any(1).mean())
    r["pairs"] = paired_bootstrap(correct, args.boot, args.seed)
    r["within_auc"], r["auc"] = metrics.within_auc(values, hit), metrics.auc(values, hit)
    r["mixed_inputs"] = int((hit.any(1) & ~hit.all(1)).sum())

    # depth: every trajectory's accuracy after each step; the deepest against the trained depth
    r["sample_accuracy"] = [float(ok[d - 1].mean()) for d in depths]
    r["depth_gain"] = (gain(ok[depths[-1] - 1].mean(1), ok[at].mean(1), args.boot, args.seed)
                       if depths[-1] > trained else None)
    r["within_auc_by_depth"] = [metrics.within_auc(traj.step_values[d - 1][:, :n_sel],
                                                   ok[d - 1][:, :n_sel]) for d in depths]
    # width: the best selection at the largest N against the single sample, at the trained depth
    t = depths.index(trained)
    r["wide"] = wide = max((mth for mth in METHODS if mth != "first"),
                           key=lambda mth: grid[mth][-1, t])
    r["width_gain"] = gain(chosen_correct(task, inputs, traj.step_answers[at][:, :ns[-1]],
                                          traj.step_values[at][:, :ns[-1]], wide),
                           correct["first"], args.boot, args.seed)
    r["baseline"] = None
    if args.baseline is not None:
        base = r["baseline"] = baseline_by_depth(args.baseline, task, inputs, depths, args.seed,
                                                 args.device)
        base["by_depth"] = [float(c.mean()) for c in base["correct"]]
        base["gap"] = gain(ok[at][:, 0], base["correct"][t], args.boot, args.seed)
    return r


def stem(args, task: str = "") -> str:
    """A file name without suffix: ``width_depth[_TASK][_TAG]``."""
    return "_".join(part for part in ("width_depth", task, args.tag) if part)


def save_figure(args, r) -> tuple[Path, Path]:
    """The heat map next to the run and (unless --quick, which leaves the repository alone) under
    docs/figures."""
    from gram_pyro import plots

    figure = args.run / f"{stem(args)}.png"
    title = (f"{r['task'].name}: accuracy (%) against width and depth, {r['inputs']} test inputs, "
             "prior rollouts, no ACT")
    plots.save(heatmap(r["grid"], r["ns"], r["depths"], r["trained"], title), figure)
    docs_figure = ROOT / "docs" / "figures" / f"{stem(args, r['task'].name)}.png"
    if not args.quick:
        docs_figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, docs_figure)
    print(f"figure: {figure}" + ("" if args.quick else f" and {docs_figure}"))
    return figure, docs_figure


def report(args, r, docs_figure: Path) -> str:
    """The markdown section: set-up, the grids, depth, width, selection with intervals, the AUC."""
    task, cfg, trained, depths, ns = r["task"], r["cfg"], r["trained"], r["depths"], r["ns"]
    m, n_sel, grid, t = r["inputs"], r["n_sel"], r["grid"], depths.index(trained)
    model = "deterministic baseline" if cfg.deterministic else f"GRAM ({cfg.objective})"
    out = [f"{model} run `{args.run}` on {task.name} (trained with N_sup = {trained}), {m} test "
           f"inputs, {args.boot} bootstrap resamples. One prior rollout of {r['width']} "
           f"trajectories per input for {depths[-1]} supervision steps ({r['rollout_s']:.0f} s); "
           "the cell (N, steps) reads the first N trajectories after that step, so every cell is "
           "judged on the same samples and costs N x steps trajectory-steps whatever the method. "
           "**ACT is off everywhere**: every trajectory runs the whole budget. The single sample "
           "is trajectory 1 at every N (its rows repeat); pass@N (some one of the N correct) "
           "bounds every selection."]
    if not args.quick:
        out.append(f"![accuracy against width and depth, {task.name}](figures/{docs_figure.name})")
    out += [f"**{LABELS[name]}**\n\n" + grid_table(values, ns, depths, trained)
            for name, values in grid.items()]

    series = {f"GRAM sample accuracy (all {r['width']} trajectories)": (r["sample_accuracy"], pct),
              "GRAM single sample (trajectory 1)": (list(grid["first"][0]), pct)}
    if r["baseline"] is not None:
        series["deterministic baseline"] = (r["baseline"]["by_depth"], pct)
    series[f"LPRM within-input AUC (N = {n_sel})"] = (r["within_auc_by_depth"],
                                                       lambda v: f"{v:.3f}")
    text = "**Depth** (the same rollout)\n\n" + depth_table(series, depths, trained)
    if r["depth_gain"] is not None:
        text += (f"\n\nSample accuracy at {depths[-1]} steps minus the trained {trained}: "
                 f"{points(*r['depth_gain'])} (paired over puzzles): "
                 + ("it rises beyond the trained depth." if r["depth_gain"][1] > 0 else
                    "no rise beyond the trained depth that the interval supports."))
    if r["baseline"] is not None:
        base = r["baseline"]
        text += (f"\n\nThe baseline (`{args.baseline}`, N_sup = {base['n_supervision']}"
                 + ("" if base["deterministic"] else ", NOT a deterministic run: read with one "
                    "trajectory anyway") + f") ran the same {m} puzzles. GRAM's single sample "
                 f"minus the baseline at {trained} steps: {points(*base['gap'])}.")
    out.append(text)

    wide, width_gain = r["wide"], r["width_gain"]
    out.append(f"**Width** (at the trained {trained} steps): {LABELS[wide]}, the best selection at "
               f"N = {ns[-1]}, reaches {pct(grid[wide][-1, t])} against the single sample's "
               f"{pct(grid['first'][0, t])}: {points(*width_gain)}"
               + ("" if width_gain[1] > 0 else ", an interval that includes 0")
               + f". pass@N goes from {pct(grid[PASS][0, t])} at N = {ns[0]} to "
               f"{pct(grid[PASS][-1, t])} at N = {ns[-1]}.")

    out.append(f"**Selection with evidence** at N = {n_sel} and the trained {trained} steps. Equal "
               f"compute: the four methods read the same {n_sel} trajectories; SMC ran {n_sel} "
               f"particles for the same {trained} steps ({r['smc_s']:.0f} s, {r['resampled']} "
               "resampling events over input x step). Intervals: paired bootstrap over puzzles, "
               "2.5 and 97.5 percentiles.\n\n"
               + selection_table(r["accuracy"], r["pass_at_n"], r["pairs"], n_sel, trained)
               + "\n\n" + verdict(r["accuracy"], r["pairs"]))
    out.append(f"**LPRM ranking** at N = {n_sel}, {trained} steps: within-input AUC "
               f"{r['within_auc']:.3f} (correct against incorrect trajectories of the same input, "
               f"averaged over the {r['mixed_inputs']} of {m} inputs that have both; 0.5 is "
               f"chance), pooled AUC {r['auc']:.3f}." + critic_note(args.run))
    return "\n\n".join(out)


def dump(path: Path, args, r, figure: Path) -> None:
    """The numbers as JSON (what tests and later plots read)."""
    path.write_text(json.dumps({
        "task": r["task"].name, "run": str(args.run), "inputs": r["inputs"], "width": r["width"],
        "samples_grid": r["ns"], "depths": r["depths"], "trained_depth": r["trained"], "act": False,
        "grid": {k: v.tolist() for k, v in r["grid"].items()},
        "sample_accuracy_by_depth": r["sample_accuracy"],
        "baseline_by_depth": None if r["baseline"] is None else r["baseline"]["by_depth"],
        "selection": {"n": r["n_sel"], "depth": r["trained"], "accuracy": r["accuracy"],
                      "pass_at_n": r["pass_at_n"], "pairs": r["pairs"],
                      "smc_resampling_events": r["resampled"]},
        "lprm_within_auc": r["within_auc"], "lprm_auc": r["auc"], "figure": str(figure),
    }, indent=1))
    print(f"numbers: {path}")


def result_lines(r) -> list[str]:
    """The best selection against the single sample, width, depth and the LPRM's ranking, each
    met only when its paired 95% interval lies above 0 (the AUC: above chance)."""
    n_sel, trained, deepest = r["n_sel"], r["trained"], r["depths"][-1]
    selectors = {k: v for k, v in r["accuracy"].items() if k != "first"}
    best = max(selectors, key=selectors.get)
    d, lo, _ = difference(r["pairs"], best, "first")
    lines = [result_line(f"{best}_minus_single_at_N{n_sel}", d, "ci95_low>0", lo > 0),
             result_line(f"{r['wide']}_N{r['ns'][-1]}_minus_single", r["width_gain"][0],
                         "ci95_low>0", r["width_gain"][1] > 0)]
    if r["depth_gain"] is not None:
        lines.append(result_line(f"sample_acc_step{deepest}_minus_step{trained}",
                                 r["depth_gain"][0], "ci95_low>0", r["depth_gain"][1] > 0))
    within = r["within_auc"]
    lines.append(result_line(f"lprm_within_auc_at_N{n_sel}", within, ">0.5", within > 0.5))
    return lines


def main(argv=None):
    args = parse(argv)
    r = measure(args)
    figure, docs_figure = save_figure(args, r)
    body = report(args, r, docs_figure)
    print(body)
    write_section(f"sudoku_width_depth_{r['task'].name}",
                  f"Width x depth and selection with evidence: {r['task'].name}", body,
                  quick=args.quick, tag=args.tag)
    dump(args.json or args.run / f"{stem(args)}.json", args, r, figure)
    for line in result_lines(r):
        print(line)


if __name__ == "__main__":
    main()
