"""Errors a user can fix: the command line prints their one-line message and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (flags, data, checkpoint). The message names the problem and the fix, on one line."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is kept untouched."""


class DamagedCheckpoint(UserError):
    """A checkpoint that reads back whole (its checksum matches) but holds values no run with these settings can
    have written: an empty or inconsistent history, an epoch or step outside the run. Nothing is trained and the
    file is left as it is."""

    def __init__(self, path, why: str):
        self.path, self.why = path, why
        super().__init__(f"checkpoint {path} is damaged ({why})",
                         "start a new run with another --out (the file is left as it is)")
