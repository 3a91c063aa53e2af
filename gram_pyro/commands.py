"""The sub-commands of ``gram``: tasks, data, train, evaluate, sample, generate, fit-critic,
fit-guide, loglik, demo.

Each ``cmd_<name>(args)`` is a thin layer over the library, and its arguments are declared in
:func:`add_subcommands`; ``cli.py`` only parses and dispatches. Libraries are imported inside
the handlers, so ``gram --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from gram_pyro.errors import UserError

# Upper bounds of the CLI's numbers: beyond them a call would run for days or exhaust memory
# (answers are kept in memory), and the message names the bound.
MAX_SAMPLES = 100_000  # `gram sample -n`: trajectories for one puzzle
MAX_EVAL_SAMPLES = 10_000  # `gram evaluate --samples`: per input, for every input of a split
MAX_GENERATE = 1_000_000  # `gram generate`: -n x --best-of trajectories in one call
MAX_STEPS = 1024  # --max-steps: supervision steps of one rollout
MAX_PARTICLES = 100_000  # `gram loglik --particles`: importance weights are kept in memory
MAX_COUNT = 10 ** 8  # inputs, optimizer steps and other counts
MAX_MINUTES = 1e6  # about two years
SEED_MAX = 2 ** 32 - 1  # numpy's seeds


def float_in(lo: float, hi: float, low_open: bool = True):
    """An argparse type: a finite number in (lo, hi] (or [lo, hi] with ``low_open=False``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (low_open and value == lo) or value > hi:
            low = f"above {lo:g}" if low_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"must be a number {low} and at most {hi:g}, got {text!r}")
        return value
    return parse


positive_float = float_in(0, MAX_MINUTES)


def int_at_least(lo: int, hi: int = MAX_COUNT):
    """An argparse type: a whole number in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, got {value:,}")
        return value
    return parse


seed_type = int_at_least(0, SEED_MAX)
steps_type = int_at_least(1, MAX_STEPS)


def dump_json(obj) -> str:
    """Strict JSON (``NaN`` and ``Infinity`` are not JSON): non-finite numbers become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=1, allow_nan=False)


def add_task_args(p, required=True, seed_default=0):
    p.add_argument("--task", required=required, help="task name, e.g. nqueens-8 (`gram tasks`)")
    p.add_argument("--unconditional", action="store_true", help="the blank-input p(x) form")
    p.add_argument("--seed", type=seed_type, default=seed_default,
                   help=f"dataset / run seed, 0..{SEED_MAX}")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --data level=medium or --data train_csv=train.csv "
                        "(repeatable; an unknown key lists the task's options)")


def add_device(p) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the model runs (default cpu)")


ACT_COST = "N-Queens 8x8: 2.4 of 8 steps, -0.3 points; colouring-10: 5.7 of 8, -4.4 points"


def add_act(p, cost: str = ACT_COST):
    p.add_argument("--act", action=argparse.BooleanOptionalAction, default=False,
                   help="halt each trajectory on its own once sigmoid(q_halt) > 0.5 and its answer "
                        f"stopped changing: fewer steps, at a cost in accuracy ({cost}); --no-act "
                        "runs the whole --max-steps budget (default: --no-act)")


def add_max_steps(p, factor: int, measured: str):
    """--max-steps, whose default is ``factor`` x the trained N_sup: the library's
    ``gram_pyro.inference.default_steps`` (not imported here, to keep --help free of torch; a
    test checks the two agree)."""
    p.add_argument("--max-steps", type=steps_type,
                   help=f"supervision steps per trajectory, at most {MAX_STEPS} (default: "
                        f"{factor} x the trained N_sup, {factor * 4} at the cpu preset; each step "
                        f"costs as much as the first; {measured})")


def add_subcommands(sub) -> None:
    p = sub.add_parser("tasks", help="list every task with its sizes")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("data", help="build (and cache) a task's dataset and print its statistics")
    add_task_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "train", help="train GRAM (or a baseline) with SVI",
        description="Train GRAM with SVI, or a baseline in the same code path: --deterministic "
                    "(TRM-like), --set levels=1 --deterministic (Looped TF), --set model=ar (an "
                    "autoregressive Transformer sampler, trained by maximum likelihood). "
                    "Data-parallel on P "
                    "processes (DistributedDataParallel; NCCL on CUDA, gloo on CPU): "
                    "`torchrun --nproc_per_node=P -m gram_pyro.cli train ...`. The config's "
                    "batch_size is the GLOBAL batch: each process takes batch_size / P examples "
                    "(global batch = per-process batch x P; P must divide it), so a run sees the "
                    "same examples at every step whatever P is. Only rank 0 prints and writes.")
    add_task_args(p, required=False, seed_default=None)
    p.add_argument("--out", help="run folder (checkpoint, config, metrics); required unless "
                   "--dry-run")
    p.add_argument("--preset", choices=["cpu", "paper"], help="default cpu")
    p.add_argument("--dry-run", action="store_true",
                   help="print the parameter count per component and the resolved config, then "
                        "stop: nothing is trained or written")
    p.add_argument("--json", action="store_true", help="with --dry-run: the description as JSON")
    p.add_argument("--steps", type=int_at_least(1), help="optimizer steps (with --resume: the new "
                   "total)")
    p.add_argument("--max-minutes", type=positive_float, help="training-time budget in minutes "
                   "(with --resume: the new total, counting the minutes already trained)")
    p.add_argument("--deterministic", action="store_true", help="noise off: the TRM-like baseline")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default cpu; under torchrun, rank r uses cuda:LOCAL_RANK")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16: bfloat16 autocast of the networks; the Gaussian heads, decoder, KLs "
                        "and log-probabilities stay float32. auto (default): bf16 where the device "
                        "computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX: "
                        "1.67x the training steps per second on 2 such cores), else fp32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); see gram_pyro/config.py. "
                        "batch_size is the global batch over all torchrun processes")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its stored config; --steps, --max-minutes, "
                        "--on-nan, --device and --set of the budget, logging and critic-fit fields "
                        "may change, anything else that differs is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the run already in --out (checkpoints, log, snapshots) and start "
                        "afresh")
    p.add_argument("--on-nan", choices=["stop", "skip"], help="on a non-finite loss or gradient: "
                   "stop with a clear error (default) or skip the batch and count it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="accuracy and coverage of prior rollouts")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int_at_least(1, MAX_EVAL_SAMPLES), default=20,
                   help=f"prior samples per input, at most {MAX_EVAL_SAMPLES:,} (default 20)")
    p.add_argument("--select", choices=["vote", "lprm", "weighted", "smc"], default="lprm",
                   help="the answer --dump records as selected: majority vote, LPRM best-of-N, "
                        "LPRM-weighted vote, or LPRM-guided SMC (the table reports every method, and SMC "
                        "too when it is chosen)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    add_max_steps(p, 2, "2 x against 1 x: +0.4 to +7.2 points of sample accuracy "
                  "over six runs of four tasks")
    add_act(p)
    p.add_argument("--limit", type=int_at_least(1), help="evaluate a seeded random subset of N inputs")
    p.add_argument("--views", type=int_at_least(1),
                   help="ARC: views per test input for pass@2, each with --samples trajectories "
                        "(default: all the run's views)")
    p.add_argument("--seed", type=seed_type, default=0)
    add_device(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump", metavar="FILE.jsonl")

    p = sub.add_parser("sample", help="sample answers for one puzzle")
    p.add_argument("run_dir")
    p.add_argument("--puzzle", required=True, help="the puzzle in the task's text format")
    p.add_argument("-n", type=int_at_least(1, MAX_SAMPLES), default=20,
                   help=f"samples, at most {MAX_SAMPLES:,} (default 20)")
    add_max_steps(p, 2, "measured as for gram evaluate")
    add_act(p)
    p.add_argument("--seed", type=seed_type, default=0)
    add_device(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("generate", help="unconditional samples p(x)")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int_at_least(1, MAX_GENERATE), default=100)
    p.add_argument("--seed", type=seed_type, default=0)
    add_max_steps(p, 4, "a 15-minute Shidoku run: 91%% valid at 4, 97%% at "
                  "16")
    add_act(p, "a Shidoku run: 81.6%% valid boards without, 70.1%% with")
    p.add_argument("--temperature", type=float_in(1e-3, 1e3, low_open=False), default=1.0,
                   help="scale of the prior's sigma, 0.001..1000 (default 1: the trained model; "
                        "below 1 trades diversity for validity)")
    p.add_argument("--best-of", type=int_at_least(1, 10_000), default=1, metavar="K",
                   help="sample K trajectories per board and let the LPRM choose one (--pick); K "
                        "times the compute, and the exact checker plays no part (default 1: at 16 "
                        "steps, K=4 measured 97.6%% valid against 97.3%%, not worth 4x)")
    p.add_argument("--pick", choices=("screen", "best"), default="screen",
                   help="with --best-of: 'screen' keeps the first trajectory the LPRM accepts "
                        "(value > 0.5), which keeps the model's spread over boards; 'best' the "
                        "highest value, which covers fewer boards (default screen)")
    p.add_argument("--puzzles", action="store_true",
                   help="turn valid samples into puzzles with a unique solution")
    add_device(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump", metavar="FILE.jsonl", help="one {board, valid} object per sample")

    p = sub.add_parser(
        "fit-critic", help="refit the ACT and LPRM heads on the trained model's prior rollouts",
        description="Refit the critic (ACT halt and LPRM value heads) of a trained run on prior "
                    "rollouts of its EMA model, holding out a tenth of the inputs; the held-out "
                    "BCE and AUC before and after are printed. The generative model is untouched. "
                    "`gram train` already ends with this fit (config critic_fit_steps).")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int_at_least(1), help="optimizer steps (default: the config's, "
                   "or 600)")
    p.add_argument("--inputs", type=int_at_least(2), help="training inputs to roll out "
                   "(default: the config's critic_fit_inputs)")
    p.add_argument("--trajectories", type=int_at_least(1, 10_000),
                   help="prior trajectories per input")
    p.add_argument("--minutes", type=positive_float, help="bound on the whole fit; half of it at "
                   "most for the rollouts")
    p.add_argument("--seed", type=seed_type, default=0)
    add_device(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "fit-guide", help="fit the guide alone for likelihood estimation (the model is frozen)",
        description="Fit the guide q(eps | x, y) of a trained run for `gram loglik`: the "
                    "generative model is frozen and the guide's own parameters maximize the full "
                    "ELBO (every transition, beta = 1) on the training pairs, keeping the best "
                    "held-out ELBO (a tenth of the pairs). Stored beside the training state; "
                    "prior rollouts, accuracy and coverage are unchanged. Continuing training "
                    "drops it (the model it was fitted to has changed).")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int_at_least(1, 10 ** 6), default=400,
                   help="optimizer steps (default 400)")
    p.add_argument("--minutes", type=positive_float, help="bound on the whole fit")
    p.add_argument("--batch-size", type=int_at_least(1, 4096), default=32)
    p.add_argument("--lr", type=float_in(0, 1), default=1e-3)
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--mixer", action=argparse.BooleanOptionalAction, default=True,
                   help="give q a block that mixes the answer across positions before its head "
                        "(default on; q otherwise reads each position's answer token alone); "
                        "it costs about one block per transition when estimating")
    p.add_argument("--objective", choices=["elbo", "rws", "iwae"], default="elbo",
                   help="'elbo' (default): minimize KL(q || posterior), the full ELBO, which "
                        "keeps q inside the posterior (a tight ELBO); 'rws': reweighted "
                        "wake-sleep's q update, KL(posterior || q), which spreads q over it, "
                        "without backpropagation through the trajectories; 'iwae': maximize "
                        "IWAE_K (--particles) with doubly reparameterized gradients, between the "
                        "two. On unconditional Shidoku rws gave a higher IWAE_1000 (-6.01 "
                        "against -6.17) and a far lower ELBO (-32.6 against -9.5): "
                        "docs/design.md §6")
    p.add_argument("--particles", type=int_at_least(2, 4096), default=16,
                   help="rws and iwae: particles per pair (default 16; a step runs "
                        "--batch-size pairs times this many trajectories)")
    p.add_argument("--defensive", action="store_true",
                   help="fit a defensive guide instead, from the fitted one (run the plain fit "
                        "first; a second --defensive fit goes on from the first) and with a "
                        "covering objective (e.g. --objective iwae "
                        "--particles 4), stored beside it: `gram loglik` then proposes from the "
                        "mixture (1 - A) x the fitted guide + A x the defensive one "
                        "(its --defensive-weight A), whose weights' tail is bounded by the "
                        "covering guide's (docs/design.md §6)")
    add_device(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("loglik", help="ELBO and importance-weighted log-likelihood, with PSIS "
                                      "k-hat and a second (SMC) estimate")
    p.add_argument("run_dir")
    p.add_argument("--particles", type=int_at_least(1, MAX_PARTICLES), default=100,
                   help=f"importance samples per example, at most {MAX_PARTICLES:,} (default 100)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--limit", type=int_at_least(1), default=50,
                   help="a seeded random subset of N (input, answer) pairs (default 50)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--smc", action=argparse.BooleanOptionalAction, default=True,
                   help="also estimate by SMC over the supervision steps with as many particles "
                        "(about the cost of the IWAE estimate again; default --smc)")
    p.add_argument("--guide", choices=("fitted", "trained"), default="fitted",
                   help="'fitted': the guide `gram fit-guide` fitted, if the run has one, else the "
                        "training guide; 'trained': always the training guide (default fitted)")
    p.add_argument("--defensive-weight", type=float_in(0, 1, low_open=False), metavar="A",
                   help="when the run has the defensive guide of `gram fit-guide --defensive`, "
                        "propose from (1 - A) x the fitted guide + A x it (default 0.1; 0: the "
                        "fitted guide alone, 1: the defensive one alone). A larger A trades "
                        "ELBO for a lighter tail (docs/design.md §6)")
    add_device(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the README's embedded default: GRAM vs the baseline on "
                                    "N-Queens 8x8, trained and evaluated on CPU")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs")
    p.add_argument("--minutes", type=positive_float, default=3.0, help="training minutes per model")
    p.add_argument("--samples", type=int_at_least(1, MAX_EVAL_SAMPLES), default=20)
    p.add_argument("--limit", type=int_at_least(1), default=300,
                   help="held-out inputs to evaluate, a seeded random subset (default 300 of 772)")


def data_options(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--data takes key=value, got {item!r}")
        out[key] = value
    return out


def cmd_tasks(args) -> None:
    from gram_pyro.tasks import get_task, task_names

    rows = []
    for name in task_names():
        t = get_task(name)
        rows.append(t.describe())
    if args.json:
        print(dump_json(rows))
        return
    print(f"{'task':<12} {'seq_len':>7} {'in_vocab':>8} {'answer_len':>10} {'answer_vocab':>12}")
    for r in rows:
        print(f"{r['name']:<12} {r['seq_len']:>7} {r['input_vocab']:>8} {r['answer_len']:>10} "
              f"{r['answer_vocab']:>12}")
    print("every puzzle task also has an unconditional form (--unconditional): blank input, "
          "p(x); digits-N is p(x) only (built in at N=8, a local MNIST file with --data path=FILE)")


def cmd_data(args) -> None:
    from gram_pyro.tasks import get_task

    task = get_task(args.task, unconditional=args.unconditional)
    data = task.build(seed=args.seed, progress=True, **data_options(args.data))
    report = {"task": task.describe(), "stats": data.stats(), "meta": data.meta}
    if args.json:
        print(dump_json(report))
        return
    print_data_stats(task, data)


def print_data_stats(task, data) -> None:
    kind = "unconditional p(x)" if task.unconditional else "conditional p(y|x)"
    print(f"{task.name} ({kind}): seq_len {task.seq_len}, answer {task.answer_len} tokens "
          f"x {task.answer_vocab} classes")
    print(f"{'split':<6} {'inputs':>8} {'pairs':>8} {'compl/input':>11} {'max':>5} {'multi':>7}")
    for name, s in data.stats().items():
        print(f"{name:<6} {s['inputs']:>8} {s['pairs']:>8} {s['completions_per_input_mean']:>11.2f} "
              f"{s['completions_per_input_max']:>5} {s['multi_solution_inputs']:>7}")
    if "evaluation_tasks" in data.meta:  # ARC
        print(f"ARC-AGI-{data.meta['version']} ({data.meta['source']}): "
              f"{len(data.meta['training_tasks'])} training and {len(data.meta['evaluation_tasks'])} "
              f"evaluation tasks that fit {data.meta['side']}x{data.meta['side']}, "
              f"{data.meta['views']} views each; val = the evaluation tasks' demonstration pairs, "
              "test = their test inputs")
    rated = {name: data.meta[name] for name in ("train", "val", "test")
             if isinstance(data.meta.get(name), dict) and "singles_rounds" in data.meta[name]}
    if rated:
        print(f"difficulty ({data.meta.get('level') or data.meta.get('source')}); rounds of singles "
              f"that solve a puzzle, 'guess' where singles get stuck:")
        for name, d in rated.items():
            g, nodes = d["givens"], d["search_nodes"]
            rounds = " ".join(f"{k}:{v}" for k, v in d["singles_rounds"].items())
            sampled = f" (of {d['described']} sampled)" if d["described"] < d["puzzles"] else ""
            print(f"  {name:<5} givens {g.get('min', 0):.0f}-{g.get('max', 0):.0f} (median "
                  f"{g.get('median', 0):.0f}); rounds {rounds or '-'}{sampled}; search nodes median "
                  f"{nodes.get('median', 0):.0f}, max {nodes.get('max', 0):.0f}")


def train_changes(args) -> dict:
    """The config fields a ``gram train --resume`` call asks for explicitly (flags left out
    are not changes)."""
    from gram_pyro.config import parse_overrides

    asked = {"task": args.task, "seed": args.seed, "steps": args.steps,
             "max_minutes": args.max_minutes, "on_nan": args.on_nan, "device": args.device,
             "precision": args.precision, "deterministic": args.deterministic or None,
             "unconditional": args.unconditional or None,
             "data_options": data_options(args.data) or None}
    if args.preset is not None:
        raise UserError("--preset cannot be given with --resume: the run keeps the config it was "
                        "started with")
    return {k: v for k, v in asked.items() if v is not None} | parse_overrides(args.set)


def cmd_train(args) -> dict:
    from gram_pyro.config import make_config
    from gram_pyro.train import Trainer

    if args.dry_run and args.resume:
        raise UserError("--dry-run describes a new run's config; it does not combine with --resume")
    if not args.out and not args.dry_run:
        raise UserError("the following arguments are required: --out (or pass --dry-run)")
    if args.resume:
        trainer = Trainer(None, args.out, resume=True, progress=not args.quiet,
                          changes=train_changes(args))
    else:
        if not args.task:
            raise UserError("the following arguments are required: --task (or pass --resume)")
        cfg = make_config(args.preset or "cpu", args.set, task=args.task,
                          unconditional=args.unconditional or None,
                          data_options=data_options(args.data) or None,
                          seed=args.seed, steps=args.steps, max_minutes=args.max_minutes,
                          deterministic=args.deterministic or None, device=args.device,
                          on_nan=args.on_nan, precision=args.precision)
        if args.dry_run:
            from gram_pyro.build import describe, format_description
            from gram_pyro.tasks import get_task

            d = describe(get_task(cfg.task, unconditional=cfg.unconditional), cfg)
            print(dump_json(d) if args.json else format_description(d))
            return d
        trainer = Trainer(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite)
    main = trainer.group.main  # under torchrun only rank 0 speaks
    if main:
        from gram_pyro.build import model_label

        kind = model_label(trainer.cfg, objective=True)
        n_params = sum(p.numel() for p in trainer.net.parameters())
        world = trainer.group.world_size
        ranks = f", {world} processes x {trainer.cfg.batch_size // world} examples per batch" \
            if world > 1 else ""
        resumed = f", resumed at step {trainer.step}" if args.resume else ""
        print(f"training {kind} on {trainer.cfg.task}: {n_params / 1e6:.2f}M parameters, "
              f"{len(trainer.x_train)} training pairs{ranks}{resumed} -> {args.out}")
    result = trainer.fit()  # leaves the process group and releases the folder at the end
    if main:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.items()))
    return result


def save_plots_or_note(save, folder) -> tuple[list, str | None]:
    """Run ``save()`` (which writes plots into ``folder``); a folder that cannot be written
    skips the plots with a note instead of failing the command."""
    try:
        return [str(path) for path in save()], None
    except OSError as e:
        return [], f"plots skipped: cannot write to {str(folder)!r} ({e.strerror or e})"


def cmd_evaluate(args) -> dict:
    from gram_pyro.evaluate import evaluate_run, format_report, save_plots, write_dump

    report, traj, part, task, chosen = evaluate_run(
        args.run_dir, samples=args.samples, split=args.split, max_steps=args.max_steps,
        act=args.act, limit=args.limit, seed=args.seed, select_method=args.select,
        device=args.device, arc_views=args.views)
    if args.dump:
        write_dump(args.dump, task, part, traj, chosen)
    report["plots"], note = save_plots_or_note(
        lambda: save_plots(args.run_dir, report, traj, part, task), args.run_dir)
    print(dump_json(report) if args.json else format_report(report))
    if not args.json:
        print("  " + (note or "plots: " + ", ".join(report["plots"])))
    elif note:
        print(f"gram: note: {note}", file=sys.stderr)
    return report


def cmd_sample(args) -> dict:
    from gram_pyro.evaluate import format_samples, sample_puzzle

    report = sample_puzzle(args.run_dir, args.puzzle, args.n, seed=args.seed,
                           max_steps=args.max_steps, act=args.act, device=args.device)
    note = None
    if report.get("arc"):  # the input, the samples and the vote in the ARC palette
        from pathlib import Path

        from gram_pyro import plots
        from gram_pyro.tasks import get_task

        x, answers, ranked, truth = report["arc"].pop("_figure")
        task = get_task(report["task"])
        fig = plots.arc_sample(task, x, answers, ranked, truth,
                               title=f"{report['puzzle'].split()[0]}: samples and the vote")
        saved, note = save_plots_or_note(
            lambda: [plots.save(fig, Path(args.run_dir) / "arc_sample.png")], args.run_dir)
        report["arc"]["plot"] = saved[0] if saved else None
    print(dump_json(report) if args.json else format_samples(report))
    if report.get("arc") and not args.json:
        print(f"  {note or 'plot: ' + report['arc']['plot']}")
    return report


def cmd_generate(args) -> dict:
    from pathlib import Path

    import numpy as np

    from gram_pyro import plots
    from gram_pyro.generate import format_generation, generate, make_puzzle
    from gram_pyro.tasks import get_task

    if args.n * args.best_of > MAX_GENERATE:
        raise UserError(f"-n {args.n} x --best-of {args.best_of} is more than {MAX_GENERATE} "
                        "trajectories in one call")
    report, boards, valid, task = generate(args.run_dir, args.n, seed=args.seed,
                                           max_steps=args.max_steps, act=args.act,
                                           temperature=args.temperature, best_of=args.best_of,
                                           pick_rule=args.pick, device=args.device)
    if args.dump:
        try:
            with open(args.dump, "w") as f:
                for b, v in zip(boards, valid):
                    f.write(json.dumps({"board": task.format_answer(b), "valid": bool(v)}) + "\n")
        except OSError as e:
            raise UserError(f"cannot write --dump file {args.dump!r}: {e.strerror}") from None
    fig = plots.boards(task, boards[:20], ok=valid[:20], title=f"{task.name}: generated boards "
                       "(red frame = invalid)")
    saved, note = save_plots_or_note(lambda: [plots.save(fig, Path(args.run_dir) / "generated.png")],
                                     args.run_dir)
    report["plot"] = saved[0] if saved else None
    if args.puzzles:
        rng = np.random.default_rng(args.seed)
        conditional = get_task(task.name)  # puzzles are inputs of the conditional task
        report["puzzles"] = []
        for b in boards[valid][: args.n]:
            p = make_puzzle(task.name, b, rng)
            report["puzzles"].append({"puzzle": conditional.format_input(p),
                                      "solution": task.format_answer(b),
                                      "givens": int((p > 0).sum())})
    if args.json:
        print(dump_json(report))
        return report
    print(format_generation(report))
    print(f"  {note or 'plot: ' + report['plot']}")
    for item in report.get("puzzles", []):
        print(f"\npuzzle ({item['givens']} givens, unique solution): {item['puzzle']}\n"
              f"solution: {item['solution']}")
    return report


def cmd_fit_critic(args) -> dict:
    from gram_pyro.build import resolve_device
    from gram_pyro.critic import format_report, refit_run

    report = refit_run(args.run_dir, steps=args.steps, inputs=args.inputs,
                       trajectories=args.trajectories, seed=args.seed,
                       seconds=args.minutes * 60 if args.minutes else None,
                       progress=not args.quiet, device=resolve_device(args.device))
    print(dump_json(report) if args.json else format_report(report))
    return report


def cmd_fit_guide(args) -> dict:
    from gram_pyro.build import resolve_device
    from gram_pyro.guide_fit import format_report, refit_run

    report = refit_run(args.run_dir, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, mixer=args.mixer, objective=args.objective,
                       particles=args.particles, defensive=args.defensive,
                       seconds=args.minutes * 60 if args.minutes else None,
                       progress=not args.quiet, device=resolve_device(args.device))
    print(dump_json(report) if args.json else format_report(report))
    return report


def cmd_loglik(args) -> dict:
    from gram_pyro.likelihood import format_loglik, run_loglik

    report = run_loglik(args.run_dir, particles=args.particles, split=args.split,
                        limit=args.limit, seed=args.seed, device=args.device,
                        fitted_guide=args.guide == "fitted",
                        defensive_weight=args.defensive_weight,
                        smc=args.smc)
    print(dump_json(report) if args.json else format_loglik(report))
    return report


def cmd_demo(args) -> None:
    """Train GRAM and the deterministic baseline on N-Queens 8x8 with the same budget, then
    print prior-rollout accuracy and coverage side by side. Existing runs are reused."""
    from pathlib import Path

    from gram_pyro.checkpoint import CHECKPOINT, PREVIOUS
    from gram_pyro.config import make_config
    from gram_pyro.evaluate import evaluate_run
    from gram_pyro.train import Trainer

    reports = {}
    for label, deterministic in (("GRAM", False), ("deterministic", True)):
        out = Path(args.out) / ("gram" if not deterministic else "deterministic")
        if (out / CHECKPOINT).exists() or (out / PREVIOUS).exists():
            print(f"{label}: reusing the trained run in {out}")
        else:  # nothing loadable: a run stopped before its first checkpoint starts afresh
            print(f"{label}: training for {args.minutes:g} min -> {out}")
            cfg = make_config("cpu", task="nqueens-8", max_minutes=args.minutes,
                              deterministic=deterministic)
            Trainer(cfg, out, overwrite=True).fit()
        reports[label] = evaluate_run(out, samples=args.samples, limit=args.limit)[0]
    n = args.samples
    print(f"\nN-Queens 8x8, test split ({reports['GRAM']['inputs']} held-out inputs, "
          f"{reports['GRAM']['completions_per_input']:.2f} valid completions each on average), "
          f"{n} prior samples per input, {args.minutes:g} CPU minutes of training each")
    print(f"{'model':<15} {'sample acc':>10} {'LPRM best':>10} {'vote':>8} "
          f"{'cov@' + str(n) + ' micro':>15} {'macro':>8}")
    for label, r in reports.items():
        print(f"{label:<15} {100 * r['sample_accuracy']:>9.1f}% {100 * r['accuracy']['lprm']:>9.1f}% "
              f"{100 * r['accuracy']['vote']:>7.1f}% {100 * r['coverage_micro']:>14.1f}% "
              f"{100 * r['coverage_macro']:>7.1f}%")
    print("accuracy = valid and keeps the givens; coverage = distinct valid answers found / all "
          "valid completions. The baseline's samples are identical by construction.")
