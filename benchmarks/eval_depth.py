"""Test-time depth on every conditional task: what supervision budget `gram evaluate` should use.

    python benchmarks/eval_depth.py --runs runs/nq8 runs/nq10 runs/col8 --depths 4 8 12 16
    python benchmarks/eval_depth.py --quick

A run trains with N_sup supervision steps; at inference the same model can recurse longer (the
paper's depth axis). This script measures, run by run, what more depth buys and costs, so that a
default rests on every task rather than on one.

For each run: ONE prior rollout of --samples trajectories per test input (a seeded subset of
--limit inputs) for max(--depths) supervision steps, without ACT, every step's decoded answer and
halting probability recorded. At each depth d, read from that one record:

- the whole budget of d steps: sample accuracy, micro and macro coverage@N, and for colouring the
  conflict edges per sample;
- the halting rule of ``gram evaluate --act`` (``gram_pyro.inference.ACT``) replayed on the
  first d steps: its sample accuracy, coverage and mean steps run (the compute it spends);
- the change in sample accuracy against the trained N_sup, with a paired bootstrap 95% interval
  over inputs (each input's score is the share of its N samples that are correct).

Every depth is thus judged on the very same samples. The rollout's wall seconds are reported;
the cost of a budget is proportional to the steps run.
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
from _runs import tiny_run  # noqa: E402
from sudoku_width_depth import gain, load, pct, points, rollout  # noqa: E402


def truncated(traj, d: int):
    """The record of ``traj`` as if it had been rolled out for ``d`` steps."""
    from gram_pyro.inference import Trajectories

    return Trajectories(traj.step_answers[d - 1], traj.step_values[d - 1],
                        np.full_like(traj.steps, d),
                        traj.step_answers[:d], traj.step_values[:d], traj.step_halts[:d])


def quality(task, part, answers) -> dict:
    """What ``gram evaluate`` reports of one set of answers ``[M, N, A]``, with per-input scores."""
    from gram_pyro import metrics

    m, n = answers.shape[:2]
    cov = metrics.coverage(task, part, answers)
    out = {"acc": cov["sample_accuracy"], "cov_micro": cov["micro"], "cov_macro": cov["macro"],
           "per_input": cov["correct"].mean(1)}
    conf = metrics.conflicts(task, np.repeat(part.inputs, n, axis=0), answers.reshape(m * n, -1))
    if conf is not None:
        out["conflicts"] = conf["mean"]
    return out


def measure_run(run: Path, depths: list[int], samples: int, limit: int | None, seed: int,
                boot: int, device: str) -> dict:
    from gram_pyro.errors import UserError
    from gram_pyro.inference import ACT, default_steps, replay_halting

    task, cfg, model, part = load(run, limit, device)
    if cfg.unconditional or cfg.model == "ar":
        raise UserError(f"{run}: a conditional latent run is needed (this one is "
                        f"{'unconditional' if cfg.unconditional else 'autoregressive'})")
    trained, default = cfg.n_supervision, default_steps(cfg)
    depths = sorted({*depths, trained, default})
    traj, seconds = rollout(model, part.inputs, samples, max(depths), seed)
    rows, base = [], None
    for d in depths:
        full = quality(task, part, traj.step_answers[d - 1])
        answers, steps = replay_halting(truncated(traj, d), ACT)
        act = quality(task, part, answers)
        rows.append({"depth": d, "full": full, "act": act, "act_steps": float(steps.mean())})
        if d == trained:
            base = full["per_input"]
    for r in rows:
        r["gain"] = gain(r["full"]["per_input"], base, boot, seed)
        r["act_gain"] = gain(r["act"]["per_input"], base, boot, seed)
        for k in ("full", "act"):
            r[k].pop("per_input")
    return {"run": str(run), "task": task.name, "trained": trained, "default": default,
            "inputs": len(part),
            "samples": samples, "deterministic": bool(cfg.deterministic),
            "rollout_seconds": seconds, "rows": rows}


def run_table(r: dict) -> str:
    colour = "conflicts" in r["rows"][0]["full"]
    head = ["steps", "sample accuracy", "vs trained", "coverage micro / macro"]
    head += ["conflicts per sample"] if colour else []
    head += ["ACT: mean steps", "ACT: sample accuracy", "ACT vs trained", "ACT: coverage micro"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        f, a = row["full"], row["act"]
        label = str(row["depth"]) + {r["trained"]: " (trained)", r["default"]: " (default)"}.get(
            row["depth"], "")
        cells = [label, pct(f["acc"]), points(*row["gain"]),
                 f"{pct(f['cov_micro'])} / {pct(f['cov_macro'])}"]
        cells += [f"{f['conflicts']:.3f}"] if colour else []
        cells += [f"{row['act_steps']:.2f}", pct(a["acc"]), points(*row["act_gain"]),
                  pct(a["cov_micro"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        ds = [row["depth"] for row in r["rows"]]
        label = f"{r['task']} ({Path(r['run']).name})"
        line, = axes[0].plot(ds, [100 * row["full"]["acc"] for row in r["rows"]], "o-", label=label)
        axes[0].plot([row["act_steps"] for row in r["rows"]],
                     [100 * row["act"]["acc"] for row in r["rows"]], "x--", color=line.get_color())
        axes[1].plot(ds, [100 * row["full"]["cov_micro"] for row in r["rows"]], "o-",
                     color=line.get_color(), label=label)
        for ax in axes:
            ax.axvline(r["trained"], color="grey", lw=0.5)
    axes[0].set(xlabel="supervision steps run (x: ACT, by its mean steps)",
                ylabel="sample accuracy (%)", title="accuracy against depth")
    axes[1].set(xlabel="supervision steps", ylabel="micro coverage (%)",
                title="coverage against depth")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", help="trained conditional GRAM run folders")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 16],
                   help="supervision steps (the trained N_sup is always added)")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--limit", type=int, help="a seeded subset of each run's test inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="where the numbers go")
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from gram_pyro.errors import UserError

    if args.quick:
        args.runs, args.depths, args.samples, args.limit, args.boot = \
            [tiny_run()], [1, 2, 4], 4, 8, 200
    if not args.runs:
        p.error("--runs is required (or --quick)")
    if min(args.depths) < 1 or args.samples < 1:
        p.error("--depths and --samples must be at least 1")
    try:
        results = [measure_run(run, args.depths, args.samples, args.limit, args.seed, args.boot,
                               args.device) for run in args.runs]
    except UserError as e:
        sys.exit(f"eval_depth: {e}")
    sections = []
    for r in results:
        kind = "deterministic baseline" if r["deterministic"] else "GRAM"
        sections.append(
            f"**{r['task']}**: {kind} run `{r['run']}`, trained with N_sup = {r['trained']}; "
            f"{r['inputs']} test inputs x {r['samples']} prior trajectories, one rollout of "
            f"{r['rows'][-1]['depth']} steps ({r['rollout_seconds']:.0f} s).\n\n" + run_table(r))
        best = max(r["rows"], key=lambda row: row["full"]["acc"])
        print(f"{r['task']} ({r['run']}): most accurate at {best['depth']} steps, "
              f"{points(*best['gain'])} against the trained {r['trained']}")
    stem = "eval_depth" + (f"_{args.tag}" if args.tag else "")
    fig = (Path(tempfile.mkdtemp()) if args.quick else ROOT / "docs" / "figures") / f"{stem}.png"
    figure(results, fig)
    body = ("ACT is the halting rule of `gram evaluate --act` (`gram_pyro.inference.ACT`), "
            "replayed on the first d steps of the same record; \"vs trained\" is the change in sample accuracy "
            "against the whole trained budget, with its paired bootstrap 95% interval over "
            "inputs.\n\n" + (f"![accuracy and coverage against depth](figures/{stem}.png)\n\n"
                             if not args.quick else "") + "\n\n".join(sections))
    print(body)
    write_section("eval_depth", "Test-time depth across tasks", body, quick=args.quick,
                  tag=args.tag)
    out = args.json or (Path(tempfile.mkdtemp()) / f"{stem}.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"numbers: {out}")
    # the default depth (inference.default_steps) rests on these: more accuracy on every run,
    # and no less coverage
    at = [(next(row for row in r["rows"] if row["depth"] == r["default"]),
           next(row for row in r["rows"] if row["depth"] == r["trained"])) for r in results]
    gain_min = min(d["full"]["acc"] - t["full"]["acc"] for d, t in at)
    cov_min = min(d["full"]["cov_micro"] - t["full"]["cov_micro"] for d, t in at)
    print(result_line("default_depth_min_accuracy_gain", gain_min, ">0", gain_min > 0))
    print(result_line("default_depth_min_coverage_change", cov_min, ">=0", cov_min >= 0))


if __name__ == "__main__":
    main()
