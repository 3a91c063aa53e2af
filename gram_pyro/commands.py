"""Sub-commands of ``gram`` beyond the data tools: train, evaluate, sample, generate, loglik, demo.

Each ``cmd_<name>(args)`` is a thin layer over the library; argument parsing lives here too so
that ``cli.py`` stays a dispatcher.
"""

from __future__ import annotations

from gram_pyro.errors import UserError


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
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump", metavar="FILE.jsonl")

    p = sub.add_parser("sample", help="sample answers for one puzzle")
    p.add_argument("run_dir")
    p.add_argument("--puzzle", required=True)
    p.add_argument("-n", type=int_at_least(1), default=20)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("generate", help="unconditional samples p(x)")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int_at_least(1), default=100)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("loglik", help="ELBO and importance-weighted log-likelihood")
    p.add_argument("run_dir")
    p.add_argument("--particles", type=int_at_least(1), default=100)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the README's embedded default run (N-Queens 8x8)")
    p.add_argument("--out", default="runs/demo", help="run folder")


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


cmd_evaluate = _not_built("evaluate")
cmd_sample = _not_built("sample")
cmd_generate = _not_built("generate")
cmd_loglik = _not_built("loglik")


def cmd_demo(args) -> None:
    """Until the model lands: build the default N-Queens 8x8 dataset and print its statistics."""
    from gram_pyro.cli import print_data_stats
    from gram_pyro.tasks import get_task

    task = get_task("nqueens-8")
    data = task.build(seed=0, progress=True)
    print_data_stats(task, data)
