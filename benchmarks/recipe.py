"""Training recipe changes measured side by side: the same task, data, seeds and CPU budget for
every variant, judged on prior rollouts of the test split.

    python benchmarks/recipe.py --task nqueens-8 --minutes 3 --seeds 0 1
    python benchmarks/recipe.py --task coloring-8 --minutes 3 --variant "no links:links=false" \\
        --variant "links:" --tag links
    python benchmarks/recipe.py --task nqueens-8 --steps 1000 --variant "fp32:precision=fp32" \
        --variant "bf16:precision=bf16" --tag per-step   # quality per optimizer step
    python benchmarks/recipe.py --quick

A variant is ``NAME:key=value,key=value`` (config overrides on top of the current `cpu` preset;
nothing after the colon is the preset itself); ``deterministic`` as a key trains the baseline.
The default variants retrace how the `cpu` preset got to where it is, one change at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import result_line, write_section  # noqa: E402
from _runs import measure_run, train_run  # noqa: E402

DEFAULT_VARIANTS = [
    "before (joint critic, lr 1e-3, 200 warm-up steps, beta 1, init_sigma 1):"
    "joint_critic=true,lr=1e-3,warmup_steps=200,beta=1,init_sigma=1",
    "joint critic off:lr=1e-3,warmup_steps=200,beta=1,init_sigma=1",
    "+ lr 2e-3, 50 warm-up steps:beta=1,init_sigma=1",
    "+ beta 2:init_sigma=1",
    "+ init_sigma 0.3:init_sigma=0.3",
    "the cpu preset (init_sigma 1, colouring 0.3):",
    "+ constant lr:lr_schedule=constant",
    "deterministic baseline (cpu preset):deterministic=true",
]
COLUMNS = {"acc": ("sample accuracy", True), "cov_micro": ("coverage@20 micro", True),
           "cov_macro": ("coverage@20 macro", True), "conflicts": ("conflicts per sample", False),
           "valid": ("valid", True), "distinct_valid": ("distinct valid boards", False),
           "within_auc": ("LPRM AUC within input", False), "steps": ("steps", False)}


def parse_variant(text: str) -> tuple[str, list[str], bool]:
    name, sep, spec = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant takes NAME:key=value,...; got {text!r}")
    items = [s.strip() for s in spec.split(",") if s.strip()]
    deterministic = "deterministic=true" in items
    return name, [s for s in items if s != "deterministic=true"], deterministic


def cell(values: list, pct: bool) -> str:
    v = np.asarray(values, dtype=float) * (100 if pct else 1)
    digits = 1 if pct else 2
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="nqueens-8", help="a task, or TASK-unconditional")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=None,
                   help="train every run for this many optimizer steps instead of --minutes "
                        "(quality per step; the cosine schedule spans them)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the test inputs")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    extra, gen_samples = [], 2000
    if args.quick:
        args.task, args.minutes, args.seeds, args.limit = "nqueens-5", 0.03, args.seeds[:1], 8
        extra, gen_samples = ["d_model=32", "n_layers=1", "eval_inputs=8"], 50
        variants = variants[:2] + variants[-1:]
    budget = f"{args.minutes:g} training minutes per run on 2 CPU cores"
    if args.steps:
        extra, args.minutes = [*extra, f"steps={args.steps}"], 0
        budget = f"{args.steps} optimizer steps per run (no time limit)"
    out = args.out or Path(tempfile.mkdtemp(prefix="gram-recipe-"))
    rows = {}
    for i, (name, overrides, deterministic) in enumerate(variants):
        for seed in args.seeds:
            run = train_run(out, f"v{i}", task=args.task, minutes=args.minutes, seed=seed,
                            overrides=[*overrides, *extra], deterministic=deterministic)
            r = measure_run(run, args.task, seed, args.limit, gen_samples)
            critic = run / "critic.json"
            if critic.exists() and json.loads(critic.read_text()).get("after"):
                r["within_auc"] = json.loads(critic.read_text())["after"]["within_auc"]
            rows.setdefault(name, []).append(r)
            print(name, seed, json.dumps(r), flush=True)
    metrics = [m for m in COLUMNS if any(m in r for rs in rows.values() for r in rs)]
    lines = ["| variant | " + " | ".join(COLUMNS[m][0] for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, rs in rows.items():
        cells = [cell([r[m] for r in rs if m in r], COLUMNS[m][1]) if any(m in r for r in rs)
                 else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    body = (f"{args.task}, {budget}, seeds "
            f"{args.seeds} (mean ± sd); each variant is the `cpu` preset with the overrides named, "
            "on the same data and seeds; prior rollouts of the test split, 20 samples per input, "
            "the whole supervision budget. The LPRM AUC is the final critic fit's, on held-out "
            "training inputs (`critic.json`).\n\n" + "\n".join(lines))
    print(body)
    write_section(f"recipe_{args.task}", f"Training recipe, side by side: {args.task}", body,
                  quick=args.quick, tag=args.tag)
    key = "acc" if "acc" in metrics else "valid"
    first, best = rows[variants[0][0]], max((rows[n] for n, _, d in variants if not d),
                                            key=lambda rs: np.mean([r[key] for r in rs]))
    gain = float(np.mean([r[key] for r in best]) - np.mean([r[key] for r in first]))
    print(result_line(f"best_minus_first_{key}", gain, ">=0", gain >= 0))


if __name__ == "__main__":
    main()
