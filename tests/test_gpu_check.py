"""`make gpu-check` without a GPU: its dry run goes through every stage on the CPU and writes report.md and
figures.json to GPU_CHECK_OUT after every stage; a run killed mid-way leaves a valid partial report; a failing
and a hanging stage are recorded and the run goes on; the declared stage budgets fit the 6-minute device budget,
and each stage's budget holds the compiles its tests ask for (counted from their parametrization,
benchmarks/gpu_check/compiles.py); the runner ends a stage, a child and a hung probe within their time; a report
is never seen half written. This is what keeps the GPU acceptance command from rotting between GPU runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import __main__ as gc  # noqa: E402
from benchmarks.gpu_check import build, compiles, pytest_stage, runner, stages  # noqa: E402
from benchmarks.gpu_check.runner import FIGURES_NAME, LOG_NAME, REPORT_NAME, write_atomic  # noqa: E402

LATE = 0.25   # s past a deadline that process scheduling may add on a busy 2-core machine
PYTEST_STAGES = ["fit-parity", "attention-parity", "benchmarks", "training", "compile"]


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


def test_each_stage_budget_holds_the_compiles_its_tests_ask_for(dry_run):
    # Counted from the parametrization each stage collects (the dry run's plan), in pipeline order, with the keys
    # earlier stages compiled taken from Triton's on-disk cache, at the stated costs (compiles.COSTS).
    st = _figures(dry_run["tmp"])["stages"]
    plans = {name: st[name]["figures"].get("compiles") for name in PYTEST_STAGES}
    print("\ncompile plans:", json.dumps(plans, indent=1))
    for name, plan in plans.items():
        assert plan and "error" not in plan, f"{name}: no compile plan: {plan}"
        assert not plan["undeclared"], f"{name}: tests that do not declare what they launch: {plan['undeclared']}"
        cost = (compiles.COSTS["start"] + stages.BY_NAME[name].run_s + compiles.COSTS["triton"] * plan["triton"]
                + compiles.COSTS["inductor"] * plan["inductor"] + compiles.COSTS["autotune"] * plan["autotune_configs"])
        assert plan["seconds"] == pytest.approx(cost, abs=0.1)
        usable = stages.BY_NAME[name].budget - sum(runner.kill_margins(stages.BY_NAME[name].budget))
        assert cost <= usable, f"{name}: {cost:.0f} s of compiles and tests > the {usable:.1f} s its budget leaves"
    assert plans["attention-parity"]["triton"] > 0 and plans["compile"]["inductor"] == 2   # one per backend
    # the later stages run the kernels the attention stage compiled: a new specialization there (e.g. one head,
    # Triton's argument == 1) would be compiled again inside a stage sized for none
    for name in ("benchmarks", "training", "compile"):
        assert plans[name]["triton"] == 0 and plans[name]["triton_cached"] > 0, (name, plans[name])


def _plan(*calls, cached=None) -> compiles.Process:
    proc = compiles.Process(cached)
    proc.add(calls)
    return proc


def test_compile_counts_follow_tritons_specialization():
    # Four kernels per pinned forward and backward (forward, delta, dK/dV, dQ); a new key where Triton specializes
    # an integer argument (divisible by 16 or not, equal to 1), a constexpr (head dim) or a dtype changes; the
    # same key costs nothing the second time, in the same process or from an earlier stage's cache.
    bf, call = torch.bfloat16, compiles.Call
    base = _plan(call(4, 8, 197, 64, bf))
    assert len(base.new) == 4
    assert len(_plan(call(4, 8, 197, 64, bf), call(2, 3, 65, 64, bf)).new) == 4          # same specialization
    assert len(_plan(call(4, 8, 197, 64, bf), call(4, 8, 256, 64, bf)).new) == 8         # N divisible by 16
    assert len(_plan(call(4, 8, 197, 64, bf), call(4, 1, 197, 64, bf)).new) == 8         # H == 1
    assert len(_plan(call(4, 8, 197, 64, bf), call(4, 8, 1, 64, bf)).new) == 8           # N == 1
    assert len(_plan(call(4, 8, 197, 64, bf), call(4, 8, 197, 48, bf)).new) == 8         # head dim
    assert len(_plan(call(4, 8, 197, 64, bf), call(4, 8, 197, 64, torch.float16)).new) == 8
    assert len(_plan(call(4, 8, 197, 64, bf, backward=False)).new) == 1
    assert len(_plan(call(4, 8, 197, 64, bf), cached=set(base.new)).new) == 0
    # autotuned: every config of the dtype's space (3 per kernel at 16 bits, 2 at float32) and the delta kernel
    tuned = _plan(call(4, 8, 256, 64, bf, None))
    assert (len(tuned.new), tuned.autotune_configs) == (10, 9)
    assert len(_plan(call(4, 8, 256, 64, torch.float32, None)).new) == 7
    # ... and then each kernel pinned to any config of its space, or another batch, compiles nothing new
    again = [call(4, 8, 256, 64, bf, (32, 64, 4, 2), kernel="dkdv"), call(64, 2, 256, 64, bf, None)]
    proc = _plan(call(4, 8, 256, 64, bf, None), *again)
    assert len(proc.new) == 10 and proc.autotune_configs == 9
    # the same tuning key with a new specialization compiles the chosen config once per kernel, not all of them
    assert len(_plan(call(4, 8, 256, 64, bf, None), call(4, 1, 256, 64, bf, None)).new) == 14
    inductor = _plan(compiles.Inductor("a model"), call(4, 8, 197, 64, bf))
    assert inductor.summary()["inductor"] == 1 and len(inductor.new) == 4


def test_counted_launches_are_the_ones_the_kernels_make():
    # The plan runs the wrapper on meta tensors; here the kernels really run (interpreter, float32, strided q, k
    # and v as SimpleViT lays them out, the gradient of its head merge): the same keys. A contiguous layout has
    # other strides (d = 24 is not divisible by 16, 2·H·d is) and must give other keys (all but the delta kernel's,
    # which reads only O and the gradient), or this test shows nothing.
    from impulse_attn.attention import triton_flash as ta
    assert ta._INTERPRETER, "tests/conftest.py sets TRITON_INTERPRET=1 on a machine without a GPU"
    b, h, n, d = 2, 3, 19, 24
    g = torch.Generator().manual_seed(0)
    q, k = (t.reshape(b, n, h, d).transpose(1, 2) for t in torch.randn(b, n, 2 * h * d, generator=g).chunk(2, -1))
    v = torch.randn(b, n, h * d, generator=g).reshape(b, n, h, d).transpose(1, 2)
    go = torch.randn(b, n, h, d, generator=g).transpose(1, 2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    real = []
    with compiles.intercept(run=True, on_launch=lambda *launch: real.append(compiles.launch_signature(*launch))):
        torch.autograd.grad(ta.flash_attention(q, k, v, 0.2), (q, k, v), go)
    interp = tuple(ta._INTERPRETER_CONFIG[x] for x in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
    planned = [compiles.launch_signature(*launch) for launch in compiles.call_launches(
        [compiles.Call(b, h, n, d, torch.float32, interp, layout="qk", grad="merged")])]
    assert len(real) == 4 and real == planned
    contiguous = [compiles.launch_signature(*launch) for launch in compiles.call_launches(
        [compiles.Call(b, h, n, d, torch.float32, interp)])]
    assert len(set(contiguous) - set(real)) == 3


def test_a_module_that_does_not_declare_its_launches_is_refused():
    module = type(sys)("test_somewhere_gpu")
    with pytest.raises(compiles.Undeclared, match="LAUNCHES"):
        compiles.declared(module, "test_x", {})
    module.LAUNCHES = {"test_x": lambda n: [compiles.Call(1, 2, n, 64, torch.bfloat16)]}
    assert compiles.declared(module, "test_x", {"n": 7})[0].n == 7
    with pytest.raises(compiles.Undeclared, match="test_y"):
        compiles.declared(module, "test_y", {})
    module.LAUNCHES = compiles.NO_LAUNCHES
    assert compiles.declared(module, "test_y", {}) == []


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


# --- the runner keeps its deadlines ------------------------------------------------------------------------------

def _sleeper(ctx, timeout):
    o = ctx.run([sys.executable, "-c", "import time; print('asleep', flush=True); time.sleep(20)"], timeout)
    return runner.failed(o, "slept") if not o.ok else runner.StageResult("passed", "woke up")


def _quick(ctx, timeout):
    return runner.StageResult("passed", f"given {timeout:.1f} s")


def test_the_runner_ends_a_stage_within_its_budget(tmp_path, monkeypatch):
    # A stage whose child sleeps past the stage's budget is ended within that budget and recorded as timed out; the
    # next stage runs with its own budget. (The run's budget is the selected stages' sum: a larger one would let
    # the child sleep on.)
    by_name = stages.BY_NAME
    monkeypatch.setitem(by_name, "fit-parity", dataclasses.replace(by_name["fit-parity"], run=_sleeper, budget=6))
    monkeypatch.setitem(by_name, "attention-parity", dataclasses.replace(by_name["attention-parity"], run=_quick,
                                                                         budget=6))
    for k in [k for k in os.environ if k.startswith("GPU_CHECK_")]:
        monkeypatch.delenv(k)
    start = time.monotonic()
    code = gc.main(["--stages", "fit-parity,attention-parity", "--out", str(tmp_path / "out")])
    took = time.monotonic() - start
    st = json.loads((tmp_path / "out" / FIGURES_NAME).read_text())["stages"]
    assert code == 1 and st["fit-parity"]["status"] == "timeout", st["fit-parity"]
    assert st["fit-parity"]["seconds"] <= 6 + LATE, st["fit-parity"]
    assert st["attention-parity"]["status"] == "passed" and st["attention-parity"]["timeout"] >= 6 - LATE
    assert took <= 12 + 2 * LATE


def test_a_child_that_ignores_sigterm_is_ended_by_its_timeout(tmp_path):
    ctx = runner.Context(dry=True, out=tmp_path, budget=10, inject={})
    try:
        o = ctx.run([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                           "print('up', flush=True); time.sleep(60)"], 3.0)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    assert o.timed_out and o.rc is None and "up" in o.tail
    assert o.seconds <= 3.0 + LATE, f"killed {o.seconds - 3.0:.1f} s after its timeout"


def test_the_build_stage_ends_within_its_time_when_its_probes_hang(tmp_path, monkeypatch):
    # nvidia-smi and nvcc --version run in the stage's own process: a hung driver must not hold the stage past its
    # time (they had fixed 10 s and 20 s timeouts of their own).
    fake = tmp_path / "cuda"
    (fake / "bin").mkdir(parents=True)
    (fake / "lib64").mkdir()
    for name in ("nvidia-smi", "nvcc"):
        exe = fake / "bin" / name
        exe.write_text("#!/bin/sh\nsleep 60\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_HOME", str(fake))
    ctx = runner.Context(dry=True, out=tmp_path / "out", budget=10, inject={})
    (tmp_path / "out").mkdir()
    start = time.monotonic()
    try:
        res = build.run(ctx, 6.0)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    took = time.monotonic() - start
    assert took <= 6.0 + 2 * LATE, f"the build stage took {took:.1f} s of its 6 s"
    assert res.status in ("failed", "timeout")


def test_a_failed_report_write_leaves_the_last_report_whole(tmp_path):
    # A reader (the device's copy of $OUT, a person) sees the previous report or the next, never part of one: the
    # text is written beside the report and renamed over it. Here the write fails midway (text that cannot be
    # encoded): the report before it must be untouched, and no temporary file left.
    path = tmp_path / FIGURES_NAME
    write_atomic(path, json.dumps({"stages": {"build": "passed"}}))
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, json.dumps({"stages": {"build": "x" * 100_000}})[:-2] + "\ud800\"}}")
    assert json.loads(path.read_text()) == {"stages": {"build": "passed"}}
    assert [p.name for p in tmp_path.iterdir()] == [FIGURES_NAME]


def test_an_installed_benchmarks_package_does_not_hide_the_gpu_check(tmp_path):
    # A regular package named "benchmarks" later on sys.path (installed distributions ship some) takes precedence
    # over a namespace package: benchmarks/ must be a regular package, or `python -m benchmarks.gpu_check` finds no
    # gpu_check and nothing runs.
    site = tmp_path / "site-packages"
    (site / "benchmarks").mkdir(parents=True)
    (site / "benchmarks" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--list"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "attention-parity" in out.stdout


# --- the GPU tests as the GPU runs them, without one ---------------------------------------------------------

_REPLAY = """
import torch
# The GPU tests' fixtures, pins and declarations, run as on a GPU; the kernels themselves cannot run here, so the
# tests' check() does nothing.
torch.cuda.is_available = lambda: True
torch.cuda.is_bf16_supported = lambda *a, **k: True
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.module.check = lambda *a, **k: None
"""


def test_no_gpu_test_leaves_a_pinned_config_behind(tmp_path):
    # A pin that outlives its test silences the autotuner for the rest of the stage's process. The GPU modules' guard
    # (tests/gpu/launch_guard.py) fails any test that leaves one; replayed here with the fixtures' real setup and
    # teardown order.
    (tmp_path / "gpu_replay.py").write_text(_REPLAY)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_replay", "-p", "no:cacheprovider", "-q",
                          "tests/gpu/test_triton_attention_gpu.py", "-k", "autotuned or every_config or vit_shapes"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]
