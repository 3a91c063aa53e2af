"""The ``gram`` command line.

Every user mistake (unknown flag, unknown task, malformed puzzle, missing folder, corrupt
checkpoint) ends in one line ``gram: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from gram_pyro.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a UserError (one line, exit 2) instead of usage text."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value
    return parse


def _add_task_args(p, required=True):
    p.add_argument("--task", required=required, help="task name, e.g. nqueens-8 (`gram tasks`)")
    p.add_argument("--unconditional", action="store_true", help="the blank-input p(x) form")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="dataset / run seed")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --data csv=sudoku_extreme.csv (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gram", description="GRAM: generative recursive reasoning in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("tasks", help="list every task with its sizes")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("data", help="build (and cache) a task's dataset and print its statistics")
    _add_task_args(p)
    p.add_argument("--json", action="store_true")

    from gram_pyro import commands  # noqa: F401  (registers train/evaluate/... below)
    commands.add_subcommands(sub, _add_task_args, _int_at_least)
    return parser


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
        print(json.dumps(rows, indent=1))
        return
    print(f"{'task':<12} {'seq_len':>7} {'in_vocab':>8} {'answer_len':>10} {'answer_vocab':>12}")
    for r in rows:
        print(f"{r['name']:<12} {r['seq_len']:>7} {r['input_vocab']:>8} {r['answer_len']:>10} "
              f"{r['answer_vocab']:>12}")
    print("every task also has an unconditional form (--unconditional): blank input, p(x)")


def cmd_data(args) -> None:
    from gram_pyro.tasks import get_task

    task = get_task(args.task, unconditional=args.unconditional)
    data = task.build(seed=args.seed, progress=True, **data_options(args.data))
    report = {"task": task.describe(), "stats": data.stats(), "meta": data.meta}
    if args.json:
        print(json.dumps(report, indent=1))
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


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = globals().get(f"cmd_{args.command}")
        if handler is None:
            from gram_pyro import commands
            handler = getattr(commands, f"cmd_{args.command.replace('-', '_')}")
        handler(args)
        return 0
    except UserError as e:
        print(f"gram: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("gram: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
