"""How an `esc` command fails: one line for the operator and the exit code to leave with.

Every command module raises `CommandError`; `esc.cli.main` prints it and exits with its
code. Exit codes: 1 not found, 2 usage (the default), 3 store (or server), 4 `verify`
found differences.
"""

from __future__ import annotations

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_DIFFERENT = 4


class CommandError(Exception):
    """A command failed for a reason the operator can act on: `str()` is the one line
    to print, `code` the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
