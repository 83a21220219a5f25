"""The stage runner: one budget, one child process at a time, and the report rewritten as results come in.

Every stage runs in child processes under a hard timeout. After every stage, and every few seconds while one runs
(from the pytest recorder's live event file), the runner rewrites the two files of the run atomically (temporary
file, then ``os.replace``): ``report.md`` and ``figures.json`` in GPU_CHECK_OUT. So a run killed at any point,
by its own timeout or from outside, leaves what it had measured up to then. All child output goes to one log,
``gpu-check.log`` beside them; scratch files (child results, event streams) live in a temporary folder, so the
output folder holds three files.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "benchmarks.gpu_check"
STATUSES = ("passed", "failed", "timeout", "not run", "error")
KILL_GRACE = 2.0          # seconds between SIGTERM and SIGKILL of an overrunning child's process group
REAP = 0.5                # seconds left after SIGKILL for the group to be gone, all inside the child's timeout
PROGRESS_EVERY = 5.0      # seconds between rewrites of the report while a stage runs
REPORT_NAME, FIGURES_NAME, LOG_NAME = "report.md", "figures.json", "gpu-check.log"


@dataclass
class StageResult:
    status: str                     # one of STATUSES
    summary: str
    figures: dict = field(default_factory=dict)
    commands: List[str] = field(default_factory=list)
    log_tail: str = ""


@dataclass
class Outcome:
    """One child process: exit code (None when killed), whether it overran its timeout, seconds, log tail."""
    rc: Optional[int]
    timed_out: bool
    seconds: float
    command: str
    tail: str

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def why(self) -> str:
        return f"timed out after {self.seconds:.0f} s" if self.timed_out else f"exit status {self.rc}"


def failed(o: Outcome, what: str, **figures) -> StageResult:
    return StageResult("timeout" if o.timed_out else "failed", f"{what}: {o.why()}", figures, [o.command], o.tail)


def display(cmd: List) -> str:
    """A command line as the report shows it: this interpreter as "python", paths in the checkout relative to it."""
    def one(arg) -> str:
        a = str(arg)
        if a == sys.executable:
            return "python"
        return a[len(str(REPO)) + 1:] if a.startswith(str(REPO) + os.sep) else a
    return " ".join(shlex.quote(one(c)) for c in cmd)


def kill_margins(timeout: float) -> tuple:
    """(grace, reap) for a child with this timeout: SIGTERM goes out grace + reap seconds before the timeout and
    SIGKILL reap seconds before it, so the child is ended by its timeout, not seconds after; short timeouts (the
    self-check's) get proportionally shorter margins."""
    return min(KILL_GRACE, 0.25 * timeout), min(REAP, 0.1 * timeout)


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE, reap: float = REAP) -> bool:
    """End the child and everything it started (it leads its own process group): SIGTERM, up to ``grace`` seconds
    for it to exit, SIGKILL, up to ``reap`` seconds more. True when the child was reaped; a process stuck in the
    kernel (e.g. in a GPU driver call) may outlive SIGKILL for a while, and the run goes on rather than wait."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, reap)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=max(wait, 0.01))
            return True
        except subprocess.TimeoutExpired:
            continue
    return False


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader sees the old file or the new one, never part of one: the text
    goes to a temporary file beside it, which then takes its name (os.replace, atomic on POSIX). A write that
    fails leaves the old file as it was and no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Context:
    """Settings of this run, its clock, the child-process runner and the live record of results."""

    def __init__(self, *, dry: bool, out: Path, budget: float, inject: Dict[str, str]):
        self.dry = dry
        self.out = out
        self.budget = budget
        self.inject = inject
        self.start = time.monotonic()
        self.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.log = out / LOG_NAME
        self.facts: dict = {}
        self.results: Dict[str, dict] = {}
        self.selected: List[str] = []
        self.progress: Optional[Callable[[], None]] = None   # called every PROGRESS_EVERY s while a child runs
        self.on_partial: Optional[Callable[[str, StageResult], None]] = None

    def partial(self, stage: str, result: StageResult) -> None:
        """A stage's result so far (it is still running): shown in the report until the stage ends."""
        if self.on_partial is not None:
            self.on_partial(stage, result)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def env(self, extra: Optional[dict] = None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry:  # the dry run never touches a GPU, even on a GPU machine
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("TRITON_INTERPRET", "1")
        env.update(extra or {})
        return env

    def run(self, cmd: List, timeout: float, env: Optional[dict] = None) -> Outcome:
        """Run ``cmd`` from the repository root, output appended to the log, killed with its children when it
        overruns ``timeout`` seconds."""
        shown = display(cmd)
        start = time.monotonic()
        with open(self.log, "ab") as f:
            offset = f.tell()
            f.write(f"\n$ {shown}\n".encode())
            f.flush()
            proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or self.env(), stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            timed_out = False
            grace, reap = kill_margins(timeout)
            while True:
                left = timeout - grace - reap - (time.monotonic() - start)
                if left <= 0:   # ended by its timeout: SIGTERM now, SIGKILL `reap` s before the timeout
                    reaped = kill_group(proc, grace, reap)
                    timed_out = True
                    break
                try:
                    proc.wait(timeout=min(left, PROGRESS_EVERY))
                    break
                except subprocess.TimeoutExpired:
                    if self.progress is not None:
                        self.progress()
            seconds = time.monotonic() - start
            if timed_out:
                f.write(f"\n[gpu-check: killed after {seconds:.1f} s, its timeout was {timeout:.0f} s"
                        f"{'' if reaped else '; it had not exited yet'}]\n".encode())
        with open(self.log, "rb") as f:
            f.seek(offset)
            tail = "\n".join(f.read().decode("utf-8", "replace").rstrip().splitlines()[-25:])
        return Outcome(None if timed_out else proc.returncode, timed_out, seconds, shown, tail)

    def child(self, name: str, timeout: float, args: Optional[List[str]] = None,
              env: Optional[dict] = None) -> tuple:
        """Run one child task (``python -m benchmarks.gpu_check --child NAME``); (Outcome, its JSON or None)."""
        result = self.work / f"{name}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", PACKAGE, "--child", name, "--result", result] + (["--dry-run"] if self.dry
                                                                                      else [])
        o = self.run(cmd + list(args or []), timeout, env)
        return o, read_json(result)
