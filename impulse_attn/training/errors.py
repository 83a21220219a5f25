"""Errors a user can fix: the command line prints their one-line message and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (flags, data, checkpoint). The message names the problem and the fix, on one line."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is kept untouched."""
