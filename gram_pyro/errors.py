"""User-facing errors.

Anything a user can get wrong (a malformed puzzle, an unknown task, a corrupt checkpoint, a bad
flag) raises :class:`UserError`. The CLI prints its message on one line and exits with status 2;
it never shows a traceback for these.
"""


class UserError(Exception):
    """Bad input from the user: printed as ``gram: error: <message>``, exit status 2."""

    exit_code = 2


def warn(message: str) -> None:
    """A one-line warning on stderr (``gram: warning: <message>``): something was worked around
    (a fallback checkpoint, no data cache) and the user should know."""
    import sys

    print(f"gram: warning: {message}", file=sys.stderr)
