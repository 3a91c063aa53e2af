"""Sub-commands of ``gram`` beyond the data tools: train, evaluate, sample, generate, loglik, demo.

Each ``cmd_<name>(args)`` is a thin layer over the library; argument parsing lives here too so
that ``cli.py`` stays a dispatcher.
"""

from __future__ import annotations

from gram_pyro.errors import UserError

MAX_SAMPLES = 100_000  # per puzzle; rollouts are chunked, but the answers are kept in memory


def add_subcommands(sub, add_task_args, int_at_least) -> None:
    p = sub.add_parser("train", help="train GRAM (or the deterministic baseline) with SVI")
    add_task_args(p)
    p.add_argument("--out", required=True, help="run folder (checkpoint, config, metrics)")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--steps", type=int_at_least(1))
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--deterministic", action="store_true", help="noise off: the TRM-like baseline")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); see gram_pyro/config.py")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="accuracy and coverage of prior rollouts")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int_at_least(1), default=20)
    p.add_argument("--select", choices=["vote", "lprm", "smc"], default="lprm")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--max-steps", type=int_at_least(1), help="supervision-step budget")
    p.add_argument("--act", action="store_true", help="halt each trajectory by ACT")
    p.add_argument("--limit", type=int_at_least(1), help="evaluate only the first N inputs")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump", metavar="FILE.jsonl")

    p = sub.add_parser("sample", help="sample answers for one puzzle")
    p.add_argument("run_dir")
    p.add_argument("--puzzle", required=True, help="the puzzle in the task's text format")
    p.add_argument("-n", type=int_at_least(1), default=20)
    p.add_argument("--max-steps", type=int_at_least(1))
    p.add_argument("--act", action="store_true")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("generate", help="unconditional samples p(x)")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int_at_least(1), default=100)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("loglik", help="ELBO and importance-weighted log-likelihood")
    p.add_argument("run_dir")
    p.add_argument("--particles", type=int_at_least(1), default=100)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--limit", type=int_at_least(1), default=200,
                   help="first N (input, answer) pairs of the split (default 200)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the README's embedded default: GRAM vs the baseline on "
                                    "N-Queens 8x8, trained and evaluated on CPU")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs")
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per model")
    p.add_argument("--samples", type=int_at_least(1), default=20)


def _not_built(name: str):
    def handler(args):
        raise UserError(f"`gram {name}` is wired but not built yet; it arrives with the model "
                        "(see the open issues)")
    return handler


def cmd_train(args) -> dict:
    from gram_pyro.config import make_config
    from gram_pyro.train import Trainer

    cfg = make_config(args.preset, args.set, task=args.task, unconditional=args.unconditional or None,
                      seed=args.seed, steps=args.steps, max_minutes=args.max_minutes,
                      deterministic=args.deterministic or None, device=args.device)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
    kind = "deterministic baseline" if trainer.cfg.deterministic else f"GRAM ({trainer.cfg.objective})"
    n_params = sum(p.numel() for p in trainer.net.parameters())
    print(f"training {kind} on {trainer.cfg.task}: {n_params / 1e6:.2f}M parameters, "
          f"{len(trainer.x_train)} training pairs -> {args.out}")
    result = trainer.fit()
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


def cmd_evaluate(args) -> dict:
    import json

    from gram_pyro.evaluate import evaluate_run, format_report

    report, *_ = evaluate_run(args.run_dir, samples=args.samples, split=args.split,
                              max_steps=args.max_steps, act=args.act, limit=args.limit,
                              seed=args.seed, device=args.device)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return report


def cmd_sample(args) -> dict:
    import json

    from gram_pyro.evaluate import format_samples, sample_puzzle

    if args.n > MAX_SAMPLES:
        raise UserError(f"-n {args.n} is more than {MAX_SAMPLES} samples for one puzzle")
    report = sample_puzzle(args.run_dir, args.puzzle, args.n, seed=args.seed,
                           max_steps=args.max_steps, act=args.act)
    print(json.dumps(report, indent=1) if args.json else format_samples(report))
    return report


cmd_generate = _not_built("generate")
def cmd_loglik(args) -> dict:
    import json

    from gram_pyro.likelihood import format_loglik, run_loglik

    if args.particles > 100_000:
        raise UserError("--particles above 100000 is not supported (weights are kept in memory)")
    report = run_loglik(args.run_dir, particles=args.particles, split=args.split,
                        limit=args.limit, seed=args.seed)
    print(json.dumps(report, indent=1) if args.json else format_loglik(report))
    return report




def cmd_demo(args) -> None:
    """Train GRAM and the deterministic baseline on N-Queens 8x8 with the same budget, then
    print prior-rollout accuracy and coverage side by side. Existing runs are reused."""
    from pathlib import Path

    from gram_pyro.checkpoint import CHECKPOINT
    from gram_pyro.config import make_config
    from gram_pyro.evaluate import evaluate_run
    from gram_pyro.train import Trainer

    if args.minutes <= 0:
        raise UserError("--minutes must be positive")
    reports = {}
    for label, deterministic in (("GRAM", False), ("deterministic", True)):
        out = Path(args.out) / ("gram" if not deterministic else "deterministic")
        if (out / CHECKPOINT).exists():
            print(f"{label}: reusing the trained run in {out}")
        else:
            print(f"{label}: training for {args.minutes:g} min -> {out}")
            cfg = make_config("cpu", task="nqueens-8", max_minutes=args.minutes,
                              deterministic=deterministic)
            Trainer(cfg, out).fit()
        reports[label], *_ = evaluate_run(out, samples=args.samples)
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
