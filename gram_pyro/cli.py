"""The ``gram`` command line: the parser and the dispatcher (the sub-commands are in
:mod:`gram_pyro.commands`).

Every user mistake (unknown flag, unknown task, malformed puzzle, missing folder, corrupt
checkpoint) ends in one line ``gram: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from gram_pyro import commands
from gram_pyro.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a UserError (one line, exit 2) instead of usage text."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gram", description="GRAM: generative recursive reasoning in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        getattr(commands, f"cmd_{args.command.replace('-', '_')}")(args)
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
