"""User-facing errors.

Anything a user can get wrong (a malformed puzzle, an unknown task, a corrupt checkpoint, a bad
flag) raises :class:`UserError`. The CLI prints its message on one line and exits with status 2;
it never shows a traceback for these.
"""


class UserError(Exception):
    """Bad input from the user: printed as ``gram: error: <message>``, exit status 2."""

    exit_code = 2
