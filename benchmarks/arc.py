"""ARC-AGI-1 on CPU: GRAM on a 20-task subset of the evaluation set, held-in accuracy over
training and the official pass@2 on those tasks' test inputs (docs/design.md §12).

    python benchmarks/arc.py --minutes 15
    python benchmarks/arc.py --minutes 15 --baseline     # and the deterministic baseline beside it
    python benchmarks/arc.py --quick

The run is the `cpu` preset on ``arc-1-10`` (the evaluation tasks whose grids all fit 10 x 10,
the first ``--eval-tasks`` of them by name), trained on those tasks' demonstration pairs in
``--views`` views each (never on a test output); with ``--training-tasks N`` it also trains on
N tasks of the training set. Held-in accuracy is the exact-match share of prior rollouts on the
demonstration pairs (the validation split, which is trained on), logged at every evaluation; the
test figure is pass@2 over all views x ``--samples`` trajectories, mapped back and voted.

CPU-scale ARC figures are not comparable with the paper's: the paper trains a 10M-parameter
model for hours on 8 GPUs over all 800 tasks at 30 x 30 with 1,000 views each; this is 15 CPU
minutes of a small model on 20 small tasks. `benchmarks/gpu_paper.sh` has the full command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import finished_run  # noqa: E402

from gram_pyro.arc import arc_report  # noqa: E402
from gram_pyro.build import programs, run_data  # noqa: E402
from gram_pyro.checkpoint import load_run  # noqa: E402
from gram_pyro.config import make_config  # noqa: E402
from gram_pyro.tasks import get_task  # noqa: E402
from gram_pyro.train import Trainer  # noqa: E402


def train(out: Path, name: str, args, options: dict, deterministic: bool, extra=()) -> Path:
    run = out / f"{name}-seed{args.seed}"
    cfg = make_config("cpu", [*extra], task=args.task, seed=args.seed, max_minutes=args.minutes,
                      deterministic=deterministic or None, data_options=options)
    if args.reuse and finished_run(run, cfg):
        print(f"reusing the finished run {run}", flush=True)
        return run
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    Trainer(cfg, run, progress=not args.quick).fit()
    return run


def measure(run: Path, args) -> dict:
    task, cfg, net = load_run(run)
    data = run_data(task, cfg)
    model, _ = programs(net, cfg)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val_prior_acc"]) for r in log if "val_prior_acc" in r]
    out = {"curve": curve, "steps": log[-1]["step"], "tasks": len(data.meta["evaluation_tasks"]),
           "demos": len(data.val), "test_inputs": len(data.test)}
    out["arc"] = arc_report(model, task, data.test, samples=args.samples, progress=not args.quick)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="arc-1-10")
    p.add_argument("--eval-tasks", type=int, default=20)
    p.add_argument("--training-tasks", type=int, default=0, help="training-set tasks added (0: none)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--samples", type=int, default=8, help="trajectories per view")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", action="store_true", help="also the deterministic baseline")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gram-arc")
    p.add_argument("--reuse", action="store_true", help="keep finished runs in --out")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    options = {"eval_tasks": args.eval_tasks, "views": args.views,
               "training_set": args.training_tasks > 0, "training_tasks": args.training_tasks}
    extra = ["critic_fit_steps=0"] if args.quick else []
    if args.quick:
        args.out, args.minutes, args.samples = Path(tempfile.mkdtemp()), 0.0, 2
        options.update(eval_tasks=2, views=2)
        extra += ["d_model=32", "n_layers=1", "steps=4", "eval_interval=2", "eval_inputs=4"]
    rows = {"GRAM": False, **({"deterministic baseline": True} if args.baseline else {})}
    results = {}
    for label, deterministic in rows.items():
        run = train(args.out, "arc-" + ("det" if deterministic else "gram"), args, options,
                    deterministic, extra)
        results[label] = measure(run, args)
        r = results[label]
        print(f"{label}: {r['steps']} steps; held-in accuracy by step "
              + ", ".join(f"{s}: {100 * a:.1f}%" for s, a in r["curve"])
              + f"; pass@2 {100 * r['arc']['pass@2']:.1f}% (LPRM-weighted "
              f"{100 * r['arc']['lprm']['pass@2']:.1f}%)", flush=True)

    first = next(iter(results.values()))
    side = get_task(args.task).side
    lines = ["| model | steps | held-in accuracy, first eval -> last | pass@1 | pass@2 | "
             "pass@2, LPRM-weighted vote | test inputs with a right answer in the top 2 |",
             "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        c, w = r["arc"], r["arc"]["lprm"]
        start, end = r["curve"][0][1], r["curve"][-1][1]
        solved = sum(x["pass@2"] for x in c["per_input"])
        lines.append(f"| {label} | {r['steps']} | {100 * start:.1f}% -> {100 * end:.1f}% | "
                     f"{100 * c['pass@1']:.1f}% | {100 * c['pass@2']:.1f}% | {100 * w['pass@2']:.1f}% | "
                     f"{solved} of {c['inputs']} |")
    curves = "\n".join(f"- {label}: " + ", ".join(f"step {s}: {100 * a:.1f}%" for s, a in r["curve"])
                       for label, r in results.items())
    body = (f"`{args.task}`: the first {first['tasks']} ARC-AGI-1 evaluation tasks whose grids fit "
            f"{side} x {side}, {args.minutes:g} training minutes per model (seed {args.seed}), the `cpu` "
            f"preset, trained on their {first['demos']} demonstration pairs in {args.views} views "
            f"each" + (f" and on {args.training_tasks} training-set tasks" if args.training_tasks else "")
            + f", never on a test output. pass@k is over {first['test_inputs']} test inputs, "
            f"{args.views} views x {args.samples} prior trajectories each, mapped back and voted "
            "(the mean over tasks of the share of their test inputs solved, as the official "
            "score). Held-in accuracy: exact-match prior rollouts on the demonstration pairs, "
            "which are trained on.\n\n" + "\n".join(lines) + "\n\nHeld-in accuracy over training:\n"
            + curves + "\n\nThese CPU-scale figures are not comparable with the paper's ARC-AGI-1 "
            "52.0% pass@2: the paper trains a 10M-parameter model for hours on 8 GPUs over all "
            "800 tasks at 30 x 30 with 1,000 views each (`benchmarks/gpu_paper.sh`).")
    print(body)
    write_section(f"arc_{args.task}", f"ARC-AGI-1 on CPU: {args.task}, {first['tasks']} tasks", body,
                  quick=args.quick, tag=f"{args.minutes:g}min")
    g = results["GRAM"]
    rises = g["curve"][-1][1] > g["curve"][0][1]
    print(result_line("arc_heldin_accuracy_rises", g["curve"][-1][1] - g["curve"][0][1], ">0", rises))


if __name__ == "__main__":
    main()
