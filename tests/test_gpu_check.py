"""`make gpu-check` on a machine without a GPU: its dry run (benchmarks/gpu_check.py --dry-run) goes through every
stage on the CPU and writes a report with every section; a failing stage and a hanging one are recorded and the
run goes on; the parts that only a GPU run reaches (per-test outcomes after a timeout, benchmark ratios, the
experiment's sizing) are checked on made-up inputs. This is what keeps the GPU acceptance command from rotting
between GPU runs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


gc = _load()


def _image_folder(root: Path) -> None:
    """Two classes of 16x16 JPEGs in train/, val/ and test/: the experiment's command on data that loads at once."""
    from PIL import Image
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        for name, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), color).save(folder / f"{i}.jpg")


def _run(tmp: Path, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full.update(GPU_CHECK_OUT=str(tmp / "out"), GPU_CHECK_REPORT=str(tmp / "report.md"), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)


def _results(tmp: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (tmp / "out" / "results").glob("*.json")}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    _image_folder(tmp / "images")
    start = time.monotonic()
    # A fixed 2 epochs skips the experiment's calibration run (it is the same command line as the runs, through
    # `impulse-attn train`; `make gpu-check DRY_RUN=1` runs it); its metrics are checked below on the runs' own.
    proc = _run(tmp, "--dry-run", env=dict(GPU_CHECK_EXP_DATA=str(tmp / "images"), GPU_CHECK_EXP_EPOCHS="2"))
    return SimpleNamespace(tmp=tmp, proc=proc, seconds=time.monotonic() - start,
                           text=(tmp / "report.md").read_text() if (tmp / "report.md").exists() else "")


def test_dry_run_passes_every_stage_and_writes_every_section(dry_run):
    assert dry_run.proc.returncode == 0, dry_run.proc.stdout[-4000:] + dry_run.proc.stderr[-2000:]
    text = dry_run.text
    assert text.startswith("# GPU check report") and "DRY RUN" in text
    for title in gc.SECTIONS:
        assert f"\n## {title}\n" in text, f"section {title!r} missing"
    results = _results(dry_run.tmp)
    assert set(results) == {s.name for s in gc.STAGES}, "the dry run runs every stage"
    not_passed = {k: r["summary"] for k, r in results.items() if r["status"] != "passed"}
    assert not not_passed, not_passed
    assert "Not run in this report" not in text


def test_dry_run_report_holds_each_stages_data(dry_run):
    r = _results(dry_run.tmp)
    # build: the real command line, run by pip with --dry-run
    assert "pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check -e ." in dry_run.text
    assert r["build"]["data"]["verify"]["package_in_repo"] is True
    # fit launch: the planner, given an H100's documented limits, picks the documented shape
    fit = r["fit-launch"]["data"]
    assert fit["simulated"] and fit["planned_shape"] == fit["expected_shape"] == 0
    # decision: both backends timed, at kernel and model level
    dec = r["decision"]["data"]
    assert {"triton", "sdpa"} <= set(dec["kernels"][0]["ms"]) and set(dec["model"]["median_ms"]) == {"sdpa", "triton"}
    # tests and benchmarks: collected, every GPU test file named in the report
    assert r["tests"]["data"]["collected"] >= 25 and r["benchmarks"]["data"]["collected"] >= 5
    for path in sorted((REPO / "tests" / "gpu").glob("test_*.py")):
        assert f"tests/gpu/{path.name}" in dry_run.text
    assert "test_amp_steps_match_between_backends[III]" in dry_run.text
    # experiment: the compare table, val-selected accuracies, and the curves beside the report
    exp = r["experiment"]["data"]
    assert exp["epochs"] == 2 and set(exp["results"]["variants"]) == {"random", "mimetic", "impulse"}
    assert any(line.startswith("| impulse |") for line in exp["results"]["table"])
    assert (dry_run.tmp / "report-curves.png").exists() and "![accuracy curves](report-curves.png)" in dry_run.text
    assert all(r["selfcheck"]["data"]["checks"].values())


def test_calibration_reads_the_training_loops_metrics(dry_run):
    """The keys the experiment's sizing reads are the ones the training loop writes (here: a 2-epoch run of the
    dry run's experiment, the shape of a calibration run)."""
    metrics = dry_run.tmp / "out" / "experiment" / "compare" / "impulse" / "seed0" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    cal = gc.calibration_from_metrics(records, wall=records[-1]["elapsed"] + 3.0)
    assert cal is not None and cal["train_epoch_s"] > 0 and cal["overhead_s"] >= 3.0
    assert gc.calibration_from_metrics(records[:2], wall=1.0) is None  # one epoch: nothing to calibrate on


def test_a_failing_and_a_hanging_stage_are_recorded_and_the_run_goes_on(tmp_path):
    proc = _run(tmp_path, "--dry-run", "--stages", "environment,fit-launch,selfcheck",
                env=dict(GPU_CHECK_INJECT="environment=fail,fit-launch=hang"), timeout=120)
    assert proc.returncode == 1, proc.stdout
    r = _results(tmp_path)
    assert r["environment"]["status"] == "failed" and "exit status 7" in r["environment"]["summary"]
    assert r["fit-launch"]["status"] == "timeout" and r["fit-launch"]["seconds"] < 20
    assert r["selfcheck"]["status"] == "passed", "the stage after a failure and a timeout still runs"
    text = (tmp_path / "report.md").read_text()
    assert "**Result of this run: FAILED**" in text and "not passed: environment, fit-launch" in text
    assert "injected failure" in text  # the end of the failing stage's log is in the report


def test_stage_timeouts_keep_time_for_later_stages():
    ctx = SimpleNamespace(remaining=lambda: 300.0)
    build, tests, bench = gc.BY_NAME["build"], gc.BY_NAME["tests"], gc.BY_NAME["benchmarks"]
    assert gc.stage_timeout(ctx, build, [bench, tests]) == 300 - bench.floor - tests.floor
    assert gc.stage_timeout(ctx, tests, []) == 300  # the last stage gets the rest (tests' cap is above it)
    late = SimpleNamespace(remaining=lambda: 50.0)
    assert gc.stage_timeout(late, build, [bench, tests]) == 50  # behind schedule: at most what is left
    assert gc.stage_timeout(SimpleNamespace(remaining=lambda: -3.0), build, []) == 0


def test_outcomes_of_a_stage_cut_short(tmp_path):
    """What the report says about each test from the recorder's lines when the stage's timeout ended pytest."""
    lines = [dict(event="collected", nodeids=["t.py::a", "t.py::b", "t.py::c", "t.py::d", "t.py::e"]),
             dict(event="start", nodeid="t.py::a"),
             dict(event="report", nodeid="t.py::a", when="setup", outcome="passed", duration=0.1),
             dict(event="report", nodeid="t.py::a", when="call", outcome="passed", duration=1.0),
             dict(event="report", nodeid="t.py::a", when="teardown", outcome="passed", duration=0.0),
             dict(event="start", nodeid="t.py::b"),
             dict(event="report", nodeid="t.py::b", when="call", outcome="failed", duration=0.5, text="assert 1 == 2"),
             dict(event="start", nodeid="t.py::c"),
             dict(event="report", nodeid="t.py::c", when="setup", outcome="skipped", duration=0.0, reason="no bf16"),
             dict(event="start", nodeid="t.py::d")]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    s = gc.summarize_events(path)
    got = {t["nodeid"]: t["outcome"] for t in s["tests"]}
    assert got == {"t.py::a": "passed", "t.py::b": "failed", "t.py::c": "skipped", "t.py::d": "timeout",
                   "t.py::e": "not run"}
    assert not s["finished"] and s["counts"]["timeout"] == 1


def test_benchmark_ratios_against_their_baselines():
    bench = {
        "benchmarks/test_bench_fit.py::test_extension_per_step": dict(extra_info=dict(per_step_ms=4.0,
                                                                                      speedup_vs_reference=7.0)),
        "benchmarks/test_bench_fit.py::test_cuda_end_to_end_6_layers": dict(extra_info=dict(seconds=2.0)),
        "benchmarks/test_bench_triton_attention.py::test_attention_speed[fwd+bwd-256]": dict(extra_info=dict(
            N=256, ms={"triton": 0.2, "sdpa-flash": 0.25}, sdpa_ms_over_ours={"sdpa-flash": 1.25},
            best_sdpa="sdpa-flash", tflops={"triton": 300.0})),
    }
    rows = {r["name"]: r for r in gc.benchmark_rows(dict(benchmarks=bench))}
    assert rows["test_cuda_end_to_end_6_layers"]["ratio"].startswith("20.0×")  # 4 ms × 10,000 steps / 2 s
    assert rows["test_attention_speed[fwd+bwd-256]"]["ratio"].startswith("1.25×")
    assert rows["test_extension_per_step"]["ratio"].startswith("7.0×")


def test_experiment_sizing():
    # 1 s per training epoch, 2 s per evaluation, 10 s per run outside epochs, three inits, 480 s
    cal = dict(train_epoch_s=1.0, eval_s=2.0, overhead_s=10.0)
    epochs, every, predicted = gc.plan_epochs(cal, 480, 3, 200)
    assert 1 < epochs < 200 and predicted <= 0.9 * 480
    assert gc.predicted_seconds(cal, epochs + 1, gc.eval_interval(epochs + 1), 3) > 0.9 * 480  # the most that fit
    assert gc.plan_epochs(dict(cal, train_epoch_s=1000.0), 480, 3, 200)[0] == 1
    assert gc.plan_epochs(dict(cal, train_epoch_s=0.001, eval_s=0.001), 480, 3, 200)[0] == 200  # the paper's cap
    # the paper's model: 5.64 GFLOP per image forward (docs/gpu-check.md states it)
    assert round(gc.vit_forward_flops(512, 6, 8, 64, 512, 256, 12, 10) / 1e9, 2) == 5.64


def test_make_target_runs_the_script_with_the_system_python():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "gpu-check", "DRY_RUN=1", "PYTHON=python3"], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "python3 benchmarks/gpu_check.py --dry-run" in out.stdout and ".venv" not in out.stdout
