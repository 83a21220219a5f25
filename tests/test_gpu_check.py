"""`make gpu-check` without a GPU: its dry run goes through every stage on the CPU and writes report.md and
figures.json to GPU_CHECK_OUT after every stage; a run killed mid-way leaves a valid partial report; a failing
and a hanging stage are recorded and the run goes on; the declared stage budgets fit the 6-minute device budget.
This is what keeps the GPU acceptance command from rotting between GPU runs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import __main__ as gc  # noqa: E402
from benchmarks.gpu_check import pytest_stage, stages  # noqa: E402
from benchmarks.gpu_check.runner import FIGURES_NAME, LOG_NAME, REPORT_NAME  # noqa: E402


def _start(tmp: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    full.update(GPU_CHECK_OUT=str(tmp / "out"), OMP_NUM_THREADS="1", TMPDIR=str(tmp), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _figures(tmp: Path):
    try:
        return json.loads((tmp / "out" / FIGURES_NAME).read_text())
    except (OSError, ValueError):
        return None


def _end_strays(tmp: Path) -> None:
    """Kill what the runner had started when the test killed it (their command lines hold tmp's path)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(tmp) in cmdline:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def test_stage_budgets_fit_in_six_minutes():
    gpu = [s for s in stages.STAGES if s.gpu]
    total = sum(s.budget for s in gpu) + stages.START_ALLOWANCE
    assert total == stages.gpu_total() and total <= 360, f"the GPU run may take {total:.0f} s, more than 6 minutes"
    assert all(s.budget > 0 for s in stages.STAGES) and stages.START_ALLOWANCE > 0
    assert [s.name for s in gpu] == ["build", "fit-parity", "attention-parity", "benchmarks", "training", "compile"]


def test_stage_timeouts_keep_the_later_budgets():
    ctx = type("Ctx", (), dict(budget=100.0, elapsed=lambda self: 30.0))()
    later = ["training", "compile"]
    assert gc.stage_timeout(ctx, "benchmarks", later) == 70.0 - 40 - 30
    late = type("Ctx", (), dict(budget=100.0, elapsed=lambda self: 95.0))()
    assert gc.stage_timeout(late, "compile", []) == 5.0 and gc.stage_timeout(late, "training", ["compile"]) == 0


def test_output_folder_defaults_to_the_device_out(monkeypatch):
    monkeypatch.delenv("GPU_CHECK_OUT", raising=False)
    monkeypatch.setenv("OUT", "/somewhere/out")
    assert gc.parse_args([]).out == "/somewhere/out"
    monkeypatch.setenv("GPU_CHECK_OUT", "/elsewhere")
    assert gc.parse_args([]).out == "/elsewhere"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    start = time.monotonic()
    proc = _start(tmp, "--dry-run")
    seen = []   # the stages figures.json listed as finished, each time it was read
    try:
        while proc.poll() is None:
            doc = _figures(tmp)
            if doc:
                done = [n for n, r in doc["stages"].items() if r["status"] != "running"]
                if not seen or seen[-1] != done:
                    seen.append(done)
            time.sleep(0.2)
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return dict(tmp=tmp, rc=proc.returncode, output=output, seen=seen, seconds=time.monotonic() - start)


def test_dry_run_passes_every_stage_and_reports_after_each(dry_run):
    tmp = dry_run["tmp"]
    assert dry_run["rc"] == 0, dry_run["output"][-4000:]
    doc = _figures(tmp)
    names = [s.name for s in stages.STAGES]
    assert list(doc["stages"]) == names and doc["run"]["verdict"] == "PASSED"
    assert all(r["status"] == "passed" for r in doc["stages"].values())
    # figures.json was rewritten as stages finished: it listed a growing prefix of the stages
    assert len(dry_run["seen"]) >= 3, dry_run["seen"]
    for done in dry_run["seen"]:
        assert done == names[:len(done)]
    text = (tmp / "out" / REPORT_NAME).read_text()
    assert text.startswith("# GPU check report") and "DRY RUN" in text and "**Result: PASSED**" in text
    for s in stages.STAGES:
        assert f"\n## {s.title}\n" in text
    for path in sorted((REPO / "tests" / "gpu").glob("test_*.py")):
        assert f"tests/gpu/{path.name}" in text, path.name
    # what the device returns: at most 8 files, no scratch left behind
    assert sorted(p.name for p in (tmp / "out").iterdir()) == sorted([REPORT_NAME, FIGURES_NAME, LOG_NAME])
    assert not list(tmp.glob("gpu-check-*")), "the scratch folder was not removed"


def test_a_run_killed_mid_way_leaves_a_partial_report(tmp_path):
    proc = _start(tmp_path, "--dry-run", "--stages", "selfcheck,attention-parity")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            doc = _figures(tmp_path)
            if doc and doc["stages"].get("selfcheck", {}).get("status") == "passed":
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)   # as the device machine ends a run: no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _end_strays(tmp_path)
    doc = _figures(tmp_path)
    assert doc is not None, "figures.json is missing or not valid JSON after the kill"
    assert doc["stages"]["selfcheck"]["status"] == "passed"
    assert doc["stages"]["selfcheck"]["figures"]["checks"]
    assert doc["stages"].get("attention-parity", {}).get("status") in (None, "running")
    assert doc["run"]["verdict"] == "INCOMPLETE"
    text = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "| selfcheck | passed |" in text and "**Result: INCOMPLETE**" in text


def test_a_failing_and_a_hanging_stage_are_recorded_and_the_run_goes_on(tmp_path):
    proc = _start(tmp_path, "--dry-run", "--stages", "selfcheck,fit-parity,compile",
                  env=dict(GPU_CHECK_INJECT="selfcheck=fail,fit-parity=hang,compile=fail"))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    st = _figures(tmp_path)["stages"]
    assert st["selfcheck"]["status"] == "failed" and "exit status 7" in st["selfcheck"]["summary"]
    assert st["fit-parity"]["status"] == "timeout" and st["fit-parity"]["seconds"] < 10
    assert st["compile"]["status"] == "failed", "the stage after a failure and a timeout still runs"
    text = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "**Result: FAILED**" in text and "injected failure" in text


def test_outcomes_of_a_stage_cut_short(tmp_path):
    """What the report says about each test from the recorder's lines when the stage's timeout ended pytest."""
    lines = [dict(event="collected", nodeids=["t.py::a", "t.py::b", "t.py::c", "t.py::d", "t.py::e"]),
             dict(event="start", nodeid="t.py::a"),
             dict(event="report", nodeid="t.py::a", when="setup", outcome="passed", duration=0.1),
             dict(event="report", nodeid="t.py::a", when="call", outcome="passed", duration=1.0),
             dict(event="start", nodeid="t.py::b"),
             dict(event="report", nodeid="t.py::b", when="call", outcome="failed", duration=0.5, text="assert 1 == 2"),
             dict(event="start", nodeid="t.py::c"),
             dict(event="report", nodeid="t.py::c", when="setup", outcome="skipped", duration=0.0, reason="no bf16"),
             dict(event="start", nodeid="t.py::d")]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    s = pytest_stage.summarize_events(path)
    got = {t["nodeid"]: t["outcome"] for t in s["tests"]}
    assert got == {"t.py::a": "passed", "t.py::b": "failed", "t.py::c": "skipped", "t.py::d": "timeout",
                   "t.py::e": "not run"}
    assert not s["finished"] and s["counts"]["timeout"] == 1


def test_make_target_runs_the_package_with_the_system_python():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "gpu-check", "DRY_RUN=1", "PYTHON=python3"], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "python3 -m benchmarks.gpu_check --dry-run" in out.stdout and ".venv" not in out.stdout
