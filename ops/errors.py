"""The error every `tape` sub-command raises for the user: `ops.cli.main` prints it and exits with status 1."""
from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


__all__ = ["CliError"]
