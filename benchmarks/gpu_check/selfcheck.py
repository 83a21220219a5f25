"""Stage "selfcheck" (dry run only): the runner on purpose. A child that overruns its timeout must be killed with
the process it started and recorded as timed out with its output kept; a failing child's exit status is kept."""
from __future__ import annotations

import os
import re
import sys

from .runner import Context, StageResult


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True



HANG_TIMEOUT = 3.0   # s; the hanging child's SIGTERM goes out at 1.95 s (runner.kill_margins)
LATE = 0.25          # s past a timeout that scheduling may add to the measured end of a killed child


def run(ctx: Context, timeout: float) -> StageResult:
    py = sys.executable
    hang = ctx.run([py, "-c", "import signal, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                              "'import time; time.sleep(120)']); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "print('sleeping, child', p.pid, flush=True); time.sleep(120)"], HANG_TIMEOUT)
    grandchild = re.search(r"sleeping, child (\d+)", hang.tail)
    fail = ctx.run([py, "-c", "import sys; print('failing on purpose', flush=True); sys.exit(3)"], 30)
    checks = {
        "an overrunning child is reported as timed out": hang.timed_out and hang.rc is None,
        "it is ended by its timeout (it ignores SIGTERM), not later": hang.seconds <= HANG_TIMEOUT + LATE,
        "its output up to then is kept": grandchild is not None,
        "the processes it started are ended too": grandchild is not None and not _alive(int(grandchild.group(1))),
        "a failing child's exit status is kept": fail.rc == 3 and not fail.timed_out,
        "its output is kept": "failing on purpose" in fail.tail,
    }
    ok = all(checks.values())
    return StageResult("passed" if ok else "failed", f"{sum(checks.values())}/{len(checks)} runner checks hold",
                       dict(checks=checks), [hang.command, fail.command])
