#!/usr/bin/env python3
"""``make gpu-check``: the GPU acceptance run. One command on a GPU machine, one markdown report.

What it does, in stages (each in child processes, under a timeout drawn from one budget):

    environment  device, compute capability, driver, CUDA, torch, triton and nvcc versions
    build        ``pip install --no-build-isolation --no-deps -e .`` with the CUDA extension (CUDA_HOME detected,
                 TORCH_CUDA_ARCH_LIST from the visible GPU), then a check that impulse_attn._C has its CUDA kernels
    fit-launch   the CUDA fit's launch shape for the paper configuration: the planner's choice
                 (``_C.plan_launch``) and the shape a real launch took (``_C.cuda_last_launch_shape()``)
    decision     Triton vs SDPA at the paper's attention shapes and a SimpleViT training step with each: the data
                 that the "auto" attention backend policy waits for (attention/backends.py)
    benchmarks   the GPU benchmarks (benchmarks/), each with its ratio against its baseline
    tests        every test of tests/gpu/, with its outcome
    experiment   (not in the default run) random vs mimetic vs impulse init of the paper's model on
                 ../shared/data/cifar10-mini through ``impulse-attn compare``, sized to 8 minutes by a calibration
                 run: ``make gpu-check GPU_CHECK_STAGES=experiment``

A failing or timed-out stage is recorded and the next stage still runs; the exit status is 1 if any stage did not
pass. Stage results are kept as JSON in GPU_CHECK_OUT, and the report shows the latest result of every stage, so
the check and the experiment (two commands, each within 10 minutes) end in one report.

Settings (environment variables; the Makefile passes them through):

    GPU_CHECK_REPORT    the report (default docs/gpu-check-report.md; dry run: runs/gpu-check-dry/report.md)
    GPU_CHECK_OUT       stage results, logs, experiment runs (default runs/gpu-check; dry run: runs/gpu-check-dry)
    GPU_CHECK_STAGES    comma-separated stages (default: all but experiment; dry run: all)
    GPU_CHECK_BUDGET    seconds for the whole run (default 570: the run ends within 10 minutes)
    GPU_CHECK_DRY_RUN   1: everything on the CPU, the GPU untouched (see below)
    GPU_CHECK_EXP_DATA, GPU_CHECK_EXP_AUGMENT, GPU_CHECK_EXP_EPOCHS, GPU_CHECK_EXP_ARGS: the experiment's data
                        folder, augmentation (flip-crop or paper), a fixed epoch count instead of the calibrated
                        one, and extra ``impulse-attn compare`` flags
    GPU_CHECK_INJECT    testing hook: "STAGE=fail,STAGE=hang" replaces those stages by a child that fails or hangs

Dry run (``GPU_CHECK_DRY_RUN=1``, ``--dry-run`` or ``make gpu-check DRY_RUN=1``): the same stages, runner, timeouts
and report, with CUDA hidden from every child: ``pip install --dry-run``, pytest ``--collect-only``, the decision
and the experiment at tiny CPU sizes, the launch planner with an H100's documented limits, and a runner self-check
(a child that overruns its timeout and one that fails must be recorded as such). tests/test_gpu_check.py runs it.

Documentation: docs/gpu-check.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

DEFAULT_BUDGET = 570.0   # seconds: with Python and make around it, the run ends within 10 minutes
REPORT_RESERVE = 5.0     # seconds kept for writing the report after the last stage
EXPERIMENT_TARGET = 480.0  # seconds: the experiment's own budget (8 minutes), calibration included
DRY_EXPERIMENT_TARGET = 60.0

# The paper's model (Simple ViT, 16x16 token grid) and the attention shape it trains with (batch 512).
PAPER_MODEL = dict(image_size=32, patch_size=2, num_classes=10, dim=512, depth=6, num_heads=8, head_dim=64,
                   mlp_dim=512)
PAPER_ATTENTION = (512, 8, 256, 64)  # (batch, heads, tokens, head dim)
PAPER_FIT = dict(layers=6, heads=8, n=256, d=512, r=64)
# docs/kernels/fit_cuda.md, "The paper's configuration on each GPU": (capability, opt-in bytes) -> launch shape.
PAPER_SHAPE_TABLE = {((7, 0), 98304): 7, ((7, 5), 65536): 8, ((8, 0), 166912): 5, ((8, 9), 101376): 6,
                     ((9, 0), 232448): 0}
H100_LIMITS = dict(cc_major=9, cc_minor=0, smem_optin=232448, static_smem=32, code_version=90, cluster_launch=True)

# The slowest test file (autotuning over every shape and dtype) runs last, so the others always report.
SLOW_TEST_FILES = ("test_triton_attention_gpu.py",)
BENCH_FILES = ("benchmarks/test_bench_triton_attention.py", "benchmarks/test_bench_fit.py",
               "benchmarks/test_bench_train_step.py")
# The CPU extension's 10,000-step fit (minutes of CPU) is left out; its per-step time is measured and extrapolated.
BENCH_DESELECT = ("benchmarks/test_bench_fit.py::test_extension_end_to_end_6_layers",)

SECTIONS = ("Summary", "Device and versions", "Build", "CUDA fit: launch shape for the paper configuration",
            "Attention backend decision: Triton vs SDPA at the paper's shapes", "Benchmarks", "Tests",
            "Experiment: random vs mimetic vs impulse init", "Runner self-check", "Commands and logs")
STATUSES = ("passed", "failed", "timeout", "not run", "error")


# ================================================================================================ stage runner
@dataclass
class StageResult:
    status: str                     # one of STATUSES
    summary: str
    data: dict = field(default_factory=dict)
    commands: List[str] = field(default_factory=list)
    logs: List[str] = field(default_factory=list)


@dataclass
class Outcome:
    """One child process: exit code (None when killed), whether it overran its timeout, seconds, log tail."""
    rc: Optional[int]
    timed_out: bool
    seconds: float
    log: Path
    command: str

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def why(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        return f"exit status {self.rc}"


def display(cmd: List) -> str:
    """A command line as the report shows it: this interpreter as "python", paths in the checkout relative to it."""
    def one(arg) -> str:
        a = str(arg)
        if a == sys.executable:
            return "python"
        if a == str(REPO):
            return "."
        return a[len(str(REPO)) + 1:] if a.startswith(str(REPO) + os.sep) else a
    return " ".join(shlex.quote(one(c)) for c in cmd)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the child and everything it started (it leads its own process group), TERM first, then KILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class Context:
    """Settings of this run, the budget clock, and the child-process runner."""

    def __init__(self, *, dry: bool, out: Path, report: Path, budget: float, inject: Dict[str, str],
                 exp_data: str, exp_augment: str, exp_epochs: Optional[int], exp_args: List[str]):
        self.dry = dry
        self.out = out
        self.report = report
        self.budget = budget
        self.inject = inject
        self.exp_data = exp_data
        self.exp_augment = exp_augment
        self.exp_epochs = exp_epochs
        self.exp_args = exp_args
        self.start = time.monotonic()
        self.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.facts: dict = {}
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.current: Optional[subprocess.Popen] = None
        self._fresh_logs: set = set()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.budget - self.elapsed() - REPORT_RESERVE

    def env(self, extra: Optional[dict] = None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry:  # the dry run never touches a GPU, even on a GPU machine
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("TRITON_INTERPRET", "1")
        env.update(extra or {})
        return env

    def run(self, cmd: List[str], log_name: str, timeout: float, env: Optional[dict] = None) -> Outcome:
        """Run ``cmd`` from the repository root, output to logs/<log_name>.log, killed (with its children) when
        it overruns ``timeout`` seconds."""
        log = self.logs / f"{log_name}.log"
        shown = display(cmd)
        start = time.monotonic()
        mode = "ab" if log_name in self._fresh_logs else "wb"  # a log holds this run's output only
        self._fresh_logs.add(log_name)
        with open(log, mode) as f:
            f.write(f"\n$ {shown}\n".encode())
            f.flush()
            proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or self.env(), stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.current = proc
            try:
                rc: Optional[int] = proc.wait(timeout=max(timeout, 0.1))
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc, timed_out = None, True
            finally:
                self.current = None
            seconds = time.monotonic() - start
            if timed_out:
                f.write(f"\n[gpu-check: killed after {seconds:.1f} s, its timeout was {timeout:.0f} s]\n".encode())
        return Outcome(rc, timed_out, seconds, log, shown)

    def child(self, name: str, result: Path, timeout: float, log_name: Optional[str] = None,
              args: Optional[List[str]] = None, env: Optional[dict] = None) -> Outcome:
        """Run one of this script's child tasks (``--child NAME``) in a fresh interpreter."""
        result.unlink(missing_ok=True)
        cmd = [sys.executable, SCRIPT, "--child", name, "--result", result] + (["--dry-run"] if self.dry else [])
        return self.run(cmd + list(args or []), log_name or name, timeout, env)

    def rel(self, path: Path) -> str:
        """A path as the report shows it: relative to the report's folder."""
        try:
            return os.path.relpath(Path(path).resolve(), self.report.resolve().parent)
        except ValueError:
            return str(path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def _failed(o: Outcome, what: str, **data) -> StageResult:
    status = "timeout" if o.timed_out else "failed"
    return StageResult(status, f"{what}: {o.why()}", dict(data, log_tail=o.tail()), [o.command],
                       [str(o.log)])


HINTS = (
    ("externally-managed-environment", "pip refuses to install into this Python (PEP 668): run with a Python whose "
     "site-packages pip may change, e.g. PYTHON=... pointing at a venv made with --system-site-packages, or set "
     "PIP_BREAK_SYSTEM_PACKAGES=1"),
    ("No module named pip", "this Python has no pip"),
    ("invalid command 'bdist_wheel'", "install the wheel package (an editable install without build isolation "
     "needs it with older setuptools)"),
    ("Unsupported gpu architecture", "nvcc does not know this GPU's architecture: a newer CUDA toolkit is needed"),
    ("nvcc fatal", "nvcc failed; see the log"),
    ("cannot find -lcudart", "the link found no libcudart: set CUDA_HOME to the toolkit root"),
    ("The detected CUDA version", "nvcc's CUDA major version differs from torch's (torch.version.cuda)"),
    ("unrecognized arguments: --benchmark", "pytest-benchmark is not installed"),
    ("CUDA out of memory", "the GPU ran out of memory"),
)


def _hints(text: str) -> List[str]:
    return [hint for needle, hint in HINTS if needle in text]


# ============================================================================================ environment facts
def find_cuda_home() -> tuple:
    """(toolkit root or None, how it was found): as setup.py looks for it."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda", "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(root, "lib64")):
            return root, "nvcc on PATH"
    return None, "not found (no CUDA_HOME, no /usr/local/cuda, no nvcc on PATH)"


def nvcc_version(cuda_home: Optional[str]) -> Optional[str]:
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release ([\d.]+), V([\d.]+)", text)
    return m.group(2) if m else (text.strip().splitlines() or [None])[-1]


def nvidia_smi(timeout: float) -> Optional[dict]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        text = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,compute_cap",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=max(timeout, 1)).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"error": "nvidia-smi did not answer"}
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    return {"gpus": [dict(zip(("name", "driver", "memory", "compute_cap"), r)) for r in rows]}


def arch_list(facts: dict) -> tuple:
    """TORCH_CUDA_ARCH_LIST for the build: the environment's if set, else the visible GPUs' capabilities."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "from the environment"
    caps = sorted({(d["major"], d["minor"]) for d in facts.get("devices", [])})
    if caps:
        return ";".join(f"{a}.{b}" for a, b in caps), "from the visible GPU"
    return "8.0;9.0", "no GPU visible: setup.py's default"


def stage_environment(ctx: Context, timeout: float) -> StageResult:
    result = ctx.out / "environment.child.json"
    o = ctx.child("environment", result, max(timeout - 20, timeout / 2))
    data = _read_json(result) or {}
    data["nvidia_smi"] = nvidia_smi(min(15.0, max(ctx.remaining(), 1.0)))
    cuda_home, how = find_cuda_home()
    data.update(cuda_home=cuda_home, cuda_home_source=how, nvcc=nvcc_version(cuda_home))
    data["arch_list"], data["arch_source"] = arch_list(data)
    data["max_jobs"] = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)
    ctx.facts.update(data)
    if not o.ok:
        return _failed(o, "collecting versions failed", **data)
    gpu = ", ".join(f"{d['name']} ({d['major']}.{d['minor']})" for d in data.get("devices", [])) or "no GPU"
    v = data.get("versions", {})
    summary = (f"{gpu}; torch {v.get('torch')} (CUDA {data.get('torch_cuda')}), triton {v.get('triton')}, "
               f"nvcc {data.get('nvcc')}")
    missing = [name for name in ("triton", "pytest", "pytest-benchmark", "torchvision") if not v.get(name)]
    if missing:
        summary += f"; missing: {', '.join(missing)}"
    if ctx.dry:
        return StageResult("passed", "dry run (CUDA hidden): " + summary, data, [o.command], [str(o.log)])
    if not data.get("cuda_available"):
        return StageResult("failed", "torch sees no CUDA device: " + summary, data, [o.command], [str(o.log)])
    return StageResult("passed", summary, data, [o.command], [str(o.log)])


def child_environment(args) -> dict:
    import importlib.metadata as md
    import platform
    versions = {}
    for name in ("torch", "triton", "torchvision", "numpy", "pytest", "pytest-benchmark", "setuptools", "pip",
                 "wheel", "ninja"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    import torch
    data = dict(python=platform.python_version(), platform=platform.platform(terse=True), cpu_count=os.cpu_count(),
                versions=versions, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                devices=[])
    if torch.cuda.is_available():
        data["cudnn"] = torch.backends.cudnn.version()
        data["bf16"] = torch.cuda.is_bf16_supported()
        try:
            d = torch._C._cuda_getDriverVersion()  # e.g. 12040: the CUDA API version the driver supports
            data["driver_cuda_api"] = f"{d // 1000}.{d % 1000 // 10}"
        except (AttributeError, RuntimeError):
            pass
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            data["devices"].append(dict(name=p.name, major=p.major, minor=p.minor, sms=p.multi_processor_count,
                                        memory_gib=round(p.total_memory / 2 ** 30, 1)))
    return data


# ======================================================================================================= build
def stage_build(ctx: Context, timeout: float) -> StageResult:
    deadline = time.monotonic() + timeout
    if "arch_list" not in ctx.facts:  # the environment stage was not selected: ask the GPU now
        ctx.facts.update(_read_json_after(ctx, "environment", min(60.0, timeout / 4)) or {})
        ctx.facts["arch_list"], ctx.facts["arch_source"] = arch_list(ctx.facts)
    cuda_home, how = find_cuda_home()
    arch, arch_source = ctx.facts["arch_list"], ctx.facts["arch_source"]
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)
    extra = {"TORCH_CUDA_ARCH_LIST": arch, "IMPULSE_ATTN_FORCE_CUDA": "1", "MAX_JOBS": jobs, "PIP_NO_INPUT": "1"}
    if cuda_home:
        extra["CUDA_HOME"] = cuda_home
    data = dict(cuda_home=cuda_home, cuda_home_source=how, arch_list=arch, arch_source=arch_source, max_jobs=jobs)
    if cuda_home is None and not ctx.dry:
        return StageResult("failed", f"no CUDA toolkit: {how}; set CUDA_HOME", data)
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
           "--disable-pip-version-check", "-e", "."] + (["--dry-run"] if ctx.dry else [])
    env_shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
    o = ctx.run(cmd, "build", max(deadline - time.monotonic() - 30, 10), ctx.env(extra))
    data["pip_seconds"] = round(o.seconds, 1)
    commands = [f"{env_shown} {o.command}"]
    if not o.ok:
        hints = _hints(o.log.read_text(errors="replace")) if o.log.exists() else []
        res = _failed(o, "pip install failed", hints=hints, **data)
        res.commands = commands
        return res
    result = ctx.out / "verify.child.json"
    v = ctx.child("verify-build", result, max(deadline - time.monotonic(), 5), log_name="build")
    verify = _read_json(result) or {}
    data["verify"] = verify
    commands.append(v.command)
    if not v.ok:
        res = _failed(v, "the built package does not import", **data)
        res.commands = commands
        return res
    has_cuda = verify.get("has_cuda")
    summary = (f"{'pip --dry-run (nothing built)' if ctx.dry else 'built'} in {o.seconds:.0f} s for "
               f"TORCH_CUDA_ARCH_LIST={arch} ({arch_source}), CUDA_HOME={cuda_home}; _C has CUDA kernels: {has_cuda}")
    if not ctx.dry and not has_cuda:
        return StageResult("failed", summary, data, commands, [str(o.log)])
    return StageResult("passed", summary, data, commands, [str(o.log)])


def _read_json_after(ctx: Context, child: str, timeout: float):
    result = ctx.out / f"{child}.child.json"
    ctx.child(child, result, timeout)
    return _read_json(result)


def child_verify_build(args) -> dict:
    import impulse_attn
    from impulse_attn import _C
    so = Path(_C.__file__).resolve()
    return dict(has_cuda=bool(_C.has_cuda()), extension=str(so.relative_to(REPO)) if REPO in so.parents else so.name,
                package_in_repo=REPO in Path(impulse_attn.__file__).resolve().parents,
                cpu_isa=_C.cpu_isa() if hasattr(_C, "cpu_isa") else None, backends=impulse_attn.backends())


# ================================================================================================= fit launch
def stage_fit_launch(ctx: Context, timeout: float) -> StageResult:
    result = ctx.out / "fit-launch.child.json"
    o = ctx.child("fit-launch", result, timeout)
    data = _read_json(result) or {}
    if not o.ok:
        return _failed(o, "the launch-shape check failed", **data)
    planned, launched, expected = data.get("planned_shape"), data.get("launched_shape"), data.get("expected_shape")
    if data.get("simulated") and not ctx.dry:
        return StageResult("failed", f"the CUDA fit cannot run here: {data.get('cuda_unavailable_reason')}", data,
                           [o.command], [str(o.log)])
    where = "an H100's documented limits (dry run: nothing launched)" if data.get("simulated") else "this GPU"
    summary = f"planner on {where}: shape {planned}"
    problems = []
    if planned is None:
        problems.append(f"no feasible shape: {data.get('reason')}")
    if not data.get("simulated"):
        summary += f"; launched: shape {launched}"
        if launched != planned:
            problems.append(f"the launch took shape {launched}, the planner chose {planned}")
    if expected is not None:
        summary += f"; documented for this GPU: {expected}"
        if planned != expected:
            problems.append(f"docs/kernels/fit_cuda.md expects shape {expected} here")
    if problems:
        return StageResult("failed", summary + " -- " + "; ".join(problems), data, [o.command], [str(o.log)])
    return StageResult("passed", summary, data, [o.command], [str(o.log)])


def child_fit_launch(args) -> dict:
    import torch
    from impulse_attn import _C
    from impulse_attn.fitting import compiled as fit_ext
    from impulse_attn.fitting.iterative import init_qk
    from impulse_attn.fitting.reduced import factor_basis
    from impulse_attn.targets import draw_offsets, impulse_targets, sincos_2d

    x = sincos_2d((16, 16), PAPER_FIT["d"])
    basis = factor_basis(x)[0].shape[1]
    problem = dict(PAPER_FIT, basis=basis)
    cuda_ok, why = fit_ext.available("cuda")
    simulated = args.dry_run or not cuda_ok
    limits = dict(H100_LIMITS) if simulated else dict(_C.cuda_launch_limits())
    plan = _C.plan_launch(**problem, **limits)
    keep = ("shape", "cluster", "state", "b", "tiled", "tile_rows", "rows_per_block", "dynamic_bytes",
            "heads_per_launch", "launches", "description")
    plans = [{k: p.get(k) for k in keep} for p in plan["plans"]]
    key = ((limits["cc_major"], limits["cc_minor"]), limits["smem_optin"])
    expected = PAPER_SHAPE_TABLE.get(key) if limits["code_version"] >= 10 * limits["cc_major"] else None
    data = dict(problem=problem, limits=limits, simulated=simulated, cuda_unavailable_reason=why or None,
                plans=plans, reason=plan["reason"], planned_shape=plans[0]["shape"] if plans else None,
                expected_shape=expected, launched_shape=None)
    if not simulated:
        g = torch.Generator().manual_seed(0)
        t = torch.stack([impulse_targets(draw_offsets(PAPER_FIT["heads"], 5, generator=g), (16, 16))
                         for _ in range(PAPER_FIT["layers"])])
        q0, k0 = init_qk(PAPER_FIT["layers"], PAPER_FIT["heads"], PAPER_FIT["d"], PAPER_FIT["r"], g)
        kw = dict(q0=q0, k0=k0, lr=1e-4, scale=0.1, renorm_every=100, renorm="code")
        q_gpu, _ = fit_ext.fit_iterative(x, t, PAPER_FIT["r"], device="cuda", steps=20, **kw)
        torch.cuda.synchronize()
        data["launched_shape"] = _C.cuda_last_launch_shape()
        q_cpu, _ = fit_ext.fit_iterative(x, t, PAPER_FIT["r"], device="cpu", steps=20, **kw)
        data["max_abs_dq_cuda_vs_cpu_20_steps"] = float((q_gpu - q_cpu).abs().max())
        start = time.perf_counter()
        fit_ext.fit_iterative(x, t, PAPER_FIT["r"], device="cuda", steps=500, **kw)
        torch.cuda.synchronize()
        data["ms_per_step_500_steps"] = (time.perf_counter() - start) / 500 * 1e3
    return data


# =================================================================================================== decision
def stage_decision(ctx: Context, timeout: float) -> StageResult:
    result = ctx.out / "decision.child.json"
    o = ctx.child("decision", result, timeout)
    data = _read_json(result) or {}
    if not o.ok:
        return _failed(o, "the decision measurements failed", **data)
    if data.get("triton_wins") is None and not ctx.dry:
        return StageResult("failed", "no CUDA device: nothing to decide on", data, [o.command], [str(o.log)])
    return StageResult("passed", data.get("verdict", ""), data, [o.command], [str(o.log)])


def child_decision(args) -> dict:
    import copy
    import torch
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch.nn.functional as F
    import impulse_attn as ia
    from impulse_attn.attention import triton_flash as ta

    if cuda:
        import triton
        from torch.nn.attention import SDPBackend, sdpa_kernel
        shape, dtypes = PAPER_ATTENTION, [torch.bfloat16, torch.float32]
        sdpa_backends = {name: getattr(SDPBackend, attr) for name, attr in
                         (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                          ("cudnn", "CUDNN_ATTENTION"), ("math", "MATH")) if hasattr(SDPBackend, attr)}
        dev = torch.device("cuda")

        def timer(fn) -> float:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    else:
        # The dry run: the same code at a size the Triton interpreter runs in a moment; its times mean nothing.
        shape, dtypes, sdpa_backends, dev = (1, 1, 20, 16), [torch.float32], {}, torch.device("cpu")
        sdpa_kernel = None

        def timer(fn) -> float:
            fn()
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

    b, h, n, d = shape
    scale = d ** -0.5
    rows = []
    for dtype in dtypes:
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v, do = (torch.randn(b, h, n, d, generator=g, device=dev, dtype=dtype) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()
        for mode in ("fwd", "fwd+bwd"):
            def step(attn):
                def run():
                    out = attn(q, k, v)
                    if mode == "fwd+bwd":
                        torch.autograd.grad(out, (q, k, v), do)
                return run
            row = dict(dtype=str(dtype).replace("torch.", ""), mode=mode, shape=list(shape), ms={}, unavailable={})
            row["ms"]["triton"] = timer(step(lambda q, k, v: ta.flash_attention(q, k, v, scale)))
            row["ms"]["sdpa"] = timer(step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=scale)))
            for name, backend in sdpa_backends.items():
                with sdpa_kernel([backend]):
                    run = step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=scale))
                    try:
                        run()
                    except RuntimeError as e:  # this SDPA backend does not take these inputs here
                        row["unavailable"][f"sdpa-{name}"] = str(e).splitlines()[0][:160]
                        continue
                    row["ms"][f"sdpa-{name}"] = timer(run)
            row["sdpa_over_triton"] = row["ms"]["sdpa"] / row["ms"]["triton"]
            rows.append(row)

    # One optimizer step of SimpleViT (mixed precision on CUDA, as training runs it) with each backend.
    cfg = dict(PAPER_MODEL) if cuda else dict(PAPER_MODEL, image_size=8, dim=16, depth=1, num_heads=2, head_dim=8,
                                                 mlp_dim=16, kernel_size=3)
    batch = 512 if cuda else 2
    torch.manual_seed(0)
    base = ia.SimpleViT(**cfg, init="impulse", attention_backend="sdpa")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, cfg["image_size"], cfg["image_size"], generator=gen).to(dev)
    y = torch.randint(0, cfg["num_classes"], (batch,), generator=gen).to(dev)
    steps = {}
    for backend in ("sdpa", "triton"):
        model = copy.deepcopy(base).to(dev)
        model.set_attention_backend(backend)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step(model=model, opt=opt):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
        steps[backend] = train_step
    times = {name: [] for name in steps}
    for _ in range(3 if cuda else 1):
        for fn in steps.values():
            fn()
    for _ in range(10 if cuda else 1):  # alternated, so that drift hits both alike
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    model_row = dict(config=cfg, batch=batch, amp="bf16" if cuda else "off (CPU)", warmup=3 if cuda else 1,
                     timed=len(times["sdpa"]),
                     median_ms={k: statistics.median(v) for k, v in times.items()},
                     min_ms={k: min(v) for k, v in times.items()})
    model_row["sdpa_over_triton"] = model_row["median_ms"]["sdpa"] / model_row["median_ms"]["triton"]

    key = next((r for r in rows if r["dtype"] == "bfloat16" and r["mode"] == "fwd+bwd"), rows[-1])
    kernel_ratio, model_ratio = key["sdpa_over_triton"], model_row["sdpa_over_triton"]
    wins = kernel_ratio >= 1.0 and model_ratio >= 1.0
    verdict = (f"{key['dtype']} fwd+bwd at {tuple(shape)}: SDPA/Triton time = {kernel_ratio:.2f}; SimpleViT "
               f"training step (batch {batch}): {model_ratio:.2f} -> ")
    if not cuda:
        verdict += "no decision (dry run on the CPU: the interpreter times numpy, not the kernel)"
    elif wins:
        verdict += "Triton is at least as fast: the data supports listing 'triton' first in AUTO_ORDER['cuda']"
    else:
        verdict += "Triton is slower: keep AUTO_ORDER['cuda'] = ('sdpa',)"
    device = torch.cuda.get_device_name() if cuda else "CPU (dry run)"
    return dict(device=device, kernels=rows, model=model_row, triton_wins=wins if cuda else None, verdict=verdict)


# ========================================================================================= pytest (tests, bench)
def _pytest_files(ctx: Context) -> List[str]:
    files = sorted(p.name for p in (REPO / "tests" / "gpu").glob("test_*.py"))
    ordered = [f for f in files if f not in SLOW_TEST_FILES] + [f for f in files if f in SLOW_TEST_FILES]
    return [f"tests/gpu/{f}" for f in ordered]


def _run_pytest(ctx: Context, name: str, pytest_args: List[str], timeout: float) -> tuple:
    events = ctx.out / f"{name}.events.jsonl"
    events.unlink(missing_ok=True)
    common = ["--rootdir", str(REPO), "-p", "no:cacheprovider"]
    common += ["--collect-only", "-q"] if ctx.dry else ["-v", "--tb=short"]
    o = ctx.child("pytest", events, timeout, log_name=name, args=["--"] + common + pytest_args)
    return o, summarize_events(events, collect_only=ctx.dry)


def summarize_events(path: Path, collect_only: bool = False) -> dict:
    """Per-test outcomes from the recorder's JSON lines (see _recorder): what finished, what was running when the
    stage ended, what never started (or, with ``collect_only``, what was collected)."""
    tests: Dict[str, dict] = {}
    collected: List[str] = []
    collect_errors, collect_skips, benchmarks = [], [], {}
    finished = False
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind, nodeid = ev.get("event"), ev.get("nodeid", "")
        if kind == "collected":
            collected = ev["nodeids"]
            for nid in collected:
                tests.setdefault(nid, dict(nodeid=nid, outcome="collected" if collect_only else "not run",
                                           seconds=0.0))
        elif kind == "collect-error":
            collect_errors.append(dict(nodeid=nodeid, text=ev.get("text", "")))
        elif kind == "collect-skip":
            collect_skips.append(dict(nodeid=nodeid, reason=ev.get("reason", "")))
        elif kind == "start":
            tests.setdefault(nodeid, dict(nodeid=nodeid, seconds=0.0))["outcome"] = "running"
        elif kind == "benchmark":
            benchmarks[nodeid] = dict(extra_info=ev.get("extra_info", {}), stats=ev.get("stats", {}))
        elif kind == "report":
            t = tests.setdefault(nodeid, dict(nodeid=nodeid, seconds=0.0, outcome="running"))
            t["seconds"] = t.get("seconds", 0.0) + float(ev.get("duration", 0.0))
            when, outcome = ev.get("when"), ev.get("outcome")
            if outcome == "failed":
                t["outcome"] = "failed" if when == "call" else "error"
                t["detail"] = ev.get("text", "")
            elif outcome == "skipped":
                t["outcome"] = "xfailed" if ev.get("xfail") is not None else "skipped"
                t["detail"] = ev.get("reason", "") or ev.get("xfail", "")
            elif when == "call" and t.get("outcome") == "running":
                t["outcome"] = "passed"
            elif when == "teardown" and t.get("outcome") == "running":  # passed setup, no call: should not happen
                t["outcome"] = "passed"
        elif kind == "finish":
            finished = True
    counts: Dict[str, int] = {}
    for t in tests.values():
        if t["outcome"] == "running" and finished:
            t["outcome"] = "error"
        if t["outcome"] == "running":
            t["outcome"] = "timeout"  # it was running when the stage was killed
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return dict(tests=list(tests.values()), counts=counts, collected=len(collected), finished=finished,
                collect_errors=collect_errors, collect_skips=collect_skips, benchmarks=benchmarks)


def _count_text(counts: dict) -> str:
    order = ("passed", "failed", "error", "skipped", "xfailed", "timeout", "not run", "collected")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no tests"


def _pytest_status(ctx: Context, o: Outcome, s: dict, what: str) -> tuple:
    """(status, summary). On a GPU every test must run and pass: a skip there means something was not verified."""
    counts = s["counts"]
    text = _count_text(counts)
    if s["collect_errors"]:
        text += f"; {len(s['collect_errors'])} collection error(s)"
    if s["collect_skips"]:
        text += f"; {len(s['collect_skips'])} module(s) skipped at collection"
    if ctx.dry:
        ok = o.ok and not s["collect_errors"] and s["collected"] > 0
        skipped = f"; {len(s['collect_skips'])} module(s) skipped at collection" if s["collect_skips"] else ""
        errors = f"; {len(s['collect_errors'])} collection error(s)" if s["collect_errors"] else ""
        return ("passed" if ok else "failed"), f"dry run (--collect-only): {s['collected']} {what} collected" + \
            skipped + errors
    bad = [k for k in ("failed", "error", "skipped", "timeout", "not run") if counts.get(k)]
    if o.timed_out:
        return "timeout", f"{o.why()}: {text}"
    if bad or s["collect_errors"] or s["collect_skips"] or not counts.get("passed") or o.rc not in (0, 1):
        return "failed", text + ("" if o.rc in (0, 1) else f" (pytest {o.why()})")
    return "passed", text


def stage_tests(ctx: Context, timeout: float) -> StageResult:
    files = _pytest_files(ctx)
    o, s = _run_pytest(ctx, "tests", files, timeout)
    status, summary = _pytest_status(ctx, o, s, "tests")
    return StageResult(status, summary, dict(s, files=files, log_tail=o.tail() if not o.ok else ""), [o.command],
                       [str(o.log)])


def stage_benchmarks(ctx: Context, timeout: float) -> StageResult:
    args = ["--benchmark-only"] + list(BENCH_FILES)
    for nodeid in BENCH_DESELECT:
        args += ["--deselect", nodeid]
    if not ctx.dry:
        args += ["-s", f"--benchmark-json={ctx.out / 'benchmarks.json'}"]
    o, s = _run_pytest(ctx, "benchmarks", args, timeout)
    status, summary = _pytest_status(ctx, o, s, "benchmarks")
    rows = benchmark_rows(s)
    if rows and not ctx.dry:
        summary += "; " + "; ".join(f"{r['name']}: {r['ratio']}" for r in rows if r.get("headline"))
    return StageResult(status, summary, dict(s, rows=rows, log_tail=o.tail() if not o.ok else ""), [o.command],
                       [str(o.log)])


def _f(x, spec=".3g", unit="") -> str:
    return "—" if x is None else f"{x:{spec}}{unit}"


def _flop(x) -> str:
    if x is None:
        return "—"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"


def _ms(seconds) -> Optional[float]:
    return None if seconds is None else seconds * 1e3


def benchmark_rows(s: dict) -> List[dict]:
    """One row per benchmark: what was measured, its baseline, the ratio, the target (benchmarks/ docstrings)."""
    bench = s.get("benchmarks", {})
    info_of = {nid.split("::")[-1]: b.get("extra_info", {}) for nid, b in bench.items()}
    ext_step = info_of.get("test_extension_per_step", {}).get("per_step_ms")   # ms per step on this machine's CPU
    ref_step = info_of.get("test_reference_per_step", {}).get("per_step_ms")
    rows = []
    for nid, b in bench.items():
        info, stats, name = b.get("extra_info", {}), b.get("stats", {}), nid.split("::")[-1]
        row = dict(name=name, nodeid=nid, measured="—", baseline="—", ratio="—", target="—", headline=False)
        if name.startswith("test_attention_speed"):
            ms, ratios, best = info.get("ms", {}), info.get("sdpa_ms_over_ours", {}), info.get("best_sdpa")
            tflops = info.get("tflops", {}).get("triton")
            row.update(measured=f"Triton {_f(ms.get('triton'), '.3f', ' ms')} ({_f(tflops, '.0f')} TFLOP/s)",
                       baseline=f"best SDPA ({best}) {_f(ms.get(best), '.3f', ' ms')}" if best else "no SDPA ran",
                       ratio=f"{_f(ratios.get(best), '.2f')}× (SDPA/Triton time)" if best else "—",
                       target="≥ 1.00 at N = 256" if info.get("N") == 256 else "—", headline=info.get("N") == 256,
                       detail=", ".join(f"{k} {v:.3f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1])))
        elif name.startswith("test_train_step_overhead"):
            row.update(measured=f"{_f(_ms(info.get('min_step_s')), '.2f', ' ms')} per step",
                       baseline=f"plain SDPA model {_f(_ms(info.get('baseline_min_step_s')), '.2f', ' ms')}",
                       ratio=f"{_f(info.get('ratio_vs_plain_sdpa'), '.3f')}× "
                             f"(medians {_f(info.get('ratio_of_medians'), '.3f')}×)",
                       target="≤ 1.10" if info.get("backend") != "reference" else "— (reference path)",
                       headline=info.get("backend") == "triton")
        elif name == "test_reference_per_step":
            row.update(measured=f"{_f(info.get('per_step_ms'), '.1f', ' ms')} per step (CPU autograd)",
                       baseline="(the fit rows' baseline)",
                       detail=f"10,000 steps extrapolated: {_f(info.get('extrapolated_10k_steps_s'), '.0f', ' s')}")
        elif name == "test_extension_per_step":
            row.update(measured=f"{_f(info.get('per_step_ms'), '.2f', ' ms')} per step (C++, {info.get('cpu_isa')})",
                       baseline=f"reference {_f(ref_step, '.1f', ' ms')} per step",
                       ratio=f"{_f(info.get('speedup_vs_reference'), '.1f')}× faster", target="≥ 4× per step")
        elif name == "test_closed_form_6_layers":
            row.update(measured=f"{_f(info.get('seconds'), '.2f', ' s')} for 6 layers", target="< 1 s")
        elif name == "test_cuda_end_to_end_6_layers":
            sec = info.get("seconds")
            ext_total = ext_step * 10 if ext_step else None  # ms per step × 10,000 steps = s
            vs_ext = ext_total / sec if ext_total and sec else None
            vs_ref = ref_step * 10 / sec if ref_step and sec else None
            row.update(measured=f"{_f(sec, '.2f', ' s')} for 6 layers × 10,000 steps (CUDA)",
                       baseline=f"C++ extension on this CPU {_f(ext_total, '.0f', ' s')} (extrapolated)",
                       ratio=f"{_f(vs_ext, '.1f')}× faster than the CPU extension; {_f(vs_ref, '.0f')}× the reference",
                       target="< 60 s end to end", headline=True,
                       detail="max |ΔQ| CPU vs CUDA after 200 steps "
                              + _f(info.get("max_abs_dq_cpu_vs_cuda_200_steps"), ".1e"))
        else:
            ratios = {k: v for k, v in info.items() if any(w in k for w in ("ratio", "speedup", "over"))}
            row.update(measured=f"min {_f(stats.get('min'), '.4g', ' s')}",
                       ratio=", ".join(f"{k} {v}" for k, v in ratios.items()) or "—")
        rows.append(row)
    return rows


# ================================================================================================== experiment
def vit_forward_flops(dim, depth, num_heads, head_dim, mlp_dim, tokens, patch_dim, num_classes) -> float:
    """Multiply-adds ×2 of one image's forward pass through SimpleViT (matmuls only; norms and softmax are a few
    percent): per token and block the q/k, v and output projections, the MLP, and QKᵀ and PV."""
    inner = num_heads * head_dim
    per_token_block = 2 * dim * 2 * inner + 2 * dim * inner + 2 * inner * dim + 2 * 2 * dim * mlp_dim \
        + 2 * 2 * tokens * inner
    return float(tokens * (2 * patch_dim * dim + depth * per_token_block) + 2 * dim * num_classes)


def _last_flag(flags: List[str], name: str, default):
    values = [v for f, v in zip(flags, flags[1:]) if f == name]
    return type(default)(values[-1]) if values else default


def _exp_settings(ctx: Context) -> tuple:
    """(shared CLI flags, the model's sizes as the flags set them): the paper's model on the GPU, a tiny one for the
    dry run; GPU_CHECK_EXP_ARGS comes last, so its flags win."""
    common = ["--dataset", "folder", "--data-dir", ctx.exp_data, "--augment", ctx.exp_augment, "--mode", "I",
              "--alpha", "0.2", "--fit-method", "closed_form", "--no-progress", "--model", "vit"]
    if ctx.dry:
        flags = ["--image-size", "16", "--patch-size", "2", "--grid", "8", "--dim", "32", "--depth", "1",
                 "--num-heads", "2", "--head-dim", "16", "--mlp-dim", "32", "--kernel-size", "3", "--per-class", "2",
                 "--batch-size", "10", "--eval-batch-size", "500", "--lr", "1e-3", "--device", "cpu",
                 "--num-workers", "0"]
    else:
        workers = str(max(0, min(8, (os.cpu_count() or 2) - 2)))
        flags = ["--patch-size", "2", "--grid", "16", "--dim", "512", "--depth", "6", "--num-heads", "8",
                 "--head-dim", "64", "--mlp-dim", "512", "--batch-size", "256", "--eval-batch-size", "1000",
                 "--lr", "5e-4", "--amp", "auto", "--device", "cuda", "--num-workers", workers]
    flags = common + flags + ctx.exp_args
    model = {key: _last_flag(flags, "--" + key.replace("_", "-"), PAPER_MODEL[key])
             for key in ("image_size", "patch_size", "dim", "depth", "num_heads", "head_dim", "mlp_dim")}
    return flags, model


def _folder_counts(root: str) -> dict:
    """Images per split of an image folder, and its number of classes."""
    counts = {}
    base = Path(root) if os.path.isabs(root) else REPO / root
    for split in ("train", "val", "test"):
        d = base / split
        if d.is_dir():
            counts[split] = sum(1 for p in d.rglob("*") if p.is_file())
            counts.setdefault("classes", sum(1 for p in d.iterdir() if p.is_dir()))
    return counts


def _metrics(path: Path) -> List[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def calibration_from_metrics(records: List[dict], wall: float) -> Optional[dict]:
    """From the metrics of a 2-epoch run that took ``wall`` seconds: seconds per training epoch (the second, warm
    one), per evaluation of every eval split, and per run outside the epochs (start-up, data check, init, the
    evaluation at init, the first epoch's warm-up); None if the records lack them."""
    recs = {r.get("epoch"): r for r in records}
    try:
        e1, e2 = recs[1], recs[2]
        train = float(e2["epoch_seconds"])
        evaluation = max(float(e2["elapsed"]) - float(e1["elapsed"]) - train, 0.0)
        overhead = max(wall - float(e2["elapsed"]), 0.0) + max(float(e1["epoch_seconds"]) - train, 0.0)
    except (KeyError, TypeError, ValueError):
        return None
    return dict(train_epoch_s=train, eval_s=evaluation, overhead_s=overhead, wall_s=wall)


def _calibrate(ctx: Context, flags: List[str], timeout: float) -> tuple:
    """Two epochs of one variant through ``impulse-attn train``: (calibration_from_metrics or None, outcome)."""
    cal = ctx.out / "experiment" / "calibration"
    if cal.exists():
        shutil.rmtree(cal)
    cmd = [sys.executable, "-m", "impulse_attn.cli", "train"] + flags + [
        "--init", "impulse", "--seed", "0", "--epochs", "2", "--eval-every", "1", "--out", str(cal)]
    o = ctx.run(cmd, "experiment", timeout)
    return (calibration_from_metrics(_metrics(cal / "metrics.jsonl"), o.seconds) if o.ok else None), o


def eval_interval(epochs: int) -> int:
    """Evaluate every this many epochs: about 20 evaluations per run (val holds twice the training images)."""
    return max(1, math.ceil(epochs / 20))


def predicted_seconds(cal: dict, epochs: int, every: int, variants: int) -> float:
    evals = epochs // every + (1 if epochs % every else 0)
    return variants * (cal["overhead_s"] + epochs * cal["train_epoch_s"] + evals * cal["eval_s"]) + 5


def plan_epochs(cal: dict, target: float, variants: int, max_epochs: int) -> tuple:
    """(epochs, evaluation interval, predicted seconds): the most epochs whose predicted time for all variants
    stays within 90% of ``target`` seconds (at least 1)."""
    for epochs in range(max_epochs, 0, -1):
        every = eval_interval(epochs)
        if predicted_seconds(cal, epochs, every, variants) <= 0.9 * target:
            return epochs, every, predicted_seconds(cal, epochs, every, variants)
    return 1, 1, predicted_seconds(cal, 1, 1, variants)


def stage_experiment(ctx: Context, timeout: float) -> StageResult:
    deadline = time.monotonic() + timeout
    flags, model = _exp_settings(ctx)
    exp_dir = ctx.out / "experiment"
    compare_dir = exp_dir / "compare"
    exp_dir.mkdir(parents=True, exist_ok=True)
    counts = _folder_counts(ctx.exp_data)
    if not counts.get("train"):
        return StageResult("failed", f"no image folder with train/ at {ctx.exp_data}: set GPU_CHECK_EXP_DATA",
                           dict(data_dir=ctx.exp_data))
    tokens = (model["image_size"] // model["patch_size"]) ** 2
    f_img = vit_forward_flops(model["dim"], model["depth"], model["num_heads"], model["head_dim"], model["mlp_dim"],
                              tokens, 3 * model["patch_size"] ** 2, 10)
    per_class = [int(v) for f, v in zip(flags, flags[1:]) if f == "--per-class"]
    train_images = per_class[-1] * counts["classes"] if per_class else counts["train"]
    eval_images = counts.get("val", 0) + counts.get("test", 0)
    flops = dict(forward_per_image=f_img, train_per_image=3 * f_img, train_epoch=3 * f_img * train_images,
                 evaluation=f_img * eval_images, train_images=train_images, eval_images=eval_images)
    variants = ["random", "mimetic", "impulse"]
    target = min(DRY_EXPERIMENT_TARGET if ctx.dry else EXPERIMENT_TARGET, timeout - 10)
    key = flags
    plan = _read_json(exp_dir / "plan.json") or {}
    data = dict(flags=flags, data_dir=ctx.exp_data, flops=flops, data_counts=counts, target_s=target,
                variants=variants)
    commands, cal = [], None
    if plan.get("flags") == key and compare_dir.exists() and ctx.exp_epochs in (None, plan.get("epochs")):
        epochs, every, predicted = plan["epochs"], plan["eval_every"], plan.get("predicted_s")
        cal = plan.get("calibration")
        data["epochs_from"] = "the plan of an earlier run, reused: its runs in compare/ resume or are reused"
    else:
        if compare_dir.exists():
            shutil.rmtree(compare_dir)  # runs of other settings: compare would refuse them
        if ctx.exp_epochs:
            epochs, predicted = ctx.exp_epochs, None
            every = eval_interval(epochs)
            data["epochs_from"] = "GPU_CHECK_EXP_EPOCHS (no calibration)"
        else:
            cal, o = _calibrate(ctx, flags, min(150.0 if not ctx.dry else 60.0, deadline - time.monotonic() - 30))
            commands.append(o.command)
            if cal is None:
                return StageResult("failed", f"the calibration run failed ({o.why()})",
                                   dict(data, log_tail=o.tail()), commands, [str(o.log)])
            spent = time.monotonic() - (deadline - timeout)
            epochs, every, predicted = plan_epochs(cal, min(target - spent, deadline - time.monotonic() - 10),
                                                   len(variants), 2 if ctx.dry else 200)
            data["epochs_from"] = "the calibration"
        _write_json(exp_dir / "plan.json", dict(flags=key, epochs=epochs, eval_every=every, predicted_s=predicted,
                                                calibration=cal))
    warmup = int(0.05 * epochs)
    data.update(epochs=epochs, eval_every=every, warmup_epochs=warmup, predicted_s=predicted, calibration=cal)
    if cal:
        data["measured_tflops"] = flops["train_epoch"] / cal["train_epoch_s"] / 1e12 if cal["train_epoch_s"] else None
    title = (f"{'paper model' if not ctx.dry else 'dry run, tiny model'}: random vs mimetic vs impulse init, "
             f"{Path(ctx.exp_data).name}, {ctx.exp_augment}")
    cmd = [sys.executable, "-m", "impulse_attn.cli", "compare"] + flags + [
        "--epochs", str(epochs), "--eval-every", str(every), "--warmup-epochs", str(warmup),
        "--inits", ",".join(variants), "--seeds", "0", "--title", title, "--out", str(compare_dir)]
    o = ctx.run(cmd, "experiment", max(deadline - time.monotonic(), 5))
    commands.append(o.command)
    data.update(compare_seconds=round(o.seconds, 1), results=_experiment_results(compare_dir, variants))
    if not o.ok:
        res = _failed(o, "impulse-attn compare did not finish (rerun the same command: finished runs are reused, "
                         "interrupted ones resume)", **data)
        res.commands = commands
        return res
    summary = f"{len(variants)} inits × {epochs} epoch{'s' if epochs != 1 else ''} in {o.seconds:.0f} s"
    best = data["results"].get("variants", {})
    if best:
        summary += "; " + ", ".join(f"{k} val {_f(v.get('best_val'), '.1%')} / test "
                                    f"{_f(v.get('test_at_best_val'), '.1%')}" for k, v in best.items())
    return StageResult("passed", summary, data, commands, [str(o.log)])


def _experiment_results(compare_dir: Path, variants: List[str]) -> dict:
    """The compare table, the curves, and per variant: the epoch with the best val accuracy and the test accuracy
    there (settings are chosen on val; test is only reported beside it)."""
    out: dict = {"variants": {}}
    results_md = compare_dir / "results.md"
    if results_md.exists():
        text = results_md.read_text(encoding="utf-8")
        out["table"] = [line for line in text.splitlines() if line.startswith("|")]
        setting = [line for line in text.splitlines()[1:] if line.strip() and not line.startswith(("|", "#", "!"))]
        out["setting"] = setting[0] if setting else ""
    if (compare_dir / "curves.png").exists():
        out["curves"] = str(compare_dir / "curves.png")
    for label in variants:
        recs = _metrics(compare_dir / label / "seed0" / "metrics.jsonl")
        evals = [r for r in recs if "val_acc" in r and r.get("epoch", 0) > 0]
        if not evals:
            continue
        best = max(evals, key=lambda r: r["val_acc"])
        summary = _read_json(compare_dir / label / "seed0" / "summary.json") or {}
        out["variants"][label] = dict(best_epoch=best["epoch"], best_val=best["val_acc"],
                                      test_at_best_val=best.get("test_acc"), final_val=evals[-1]["val_acc"],
                                      final_test=evals[-1].get("test_acc"), epochs=recs[-1].get("epoch"),
                                      train_seconds=summary.get("train_seconds"),
                                      images_per_s=statistics.median([r["images_per_s"] for r in recs
                                                                      if "images_per_s" in r] or [float("nan")]))
    return out


# ================================================================================================== self-check
def stage_selfcheck(ctx: Context, timeout: float) -> StageResult:
    """The runner on purpose: a child that overruns its timeout and one that fails must be recorded as such, with
    the overrunning child (and its own child) ended."""
    py = sys.executable
    hang = ctx.run([py, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                              "'import time; time.sleep(120)']); print('sleeping, child', p.pid, flush=True); "
                              "time.sleep(120)"], "selfcheck", 1.5)
    grandchild = re.search(r"sleeping, child (\d+)", hang.tail())
    fail = ctx.run([py, "-c", "import sys; print('failing on purpose', flush=True); sys.exit(3)"], "selfcheck", 30)
    checks = {
        "an overrunning child is reported as timed out": hang.timed_out and hang.rc is None,
        "it is killed at its timeout, not later": hang.seconds < 12,
        "its output up to then is kept": grandchild is not None,
        "the processes it started are ended too": grandchild is not None and not _alive(int(grandchild.group(1))),
        "a failing child's exit status is kept": fail.rc == 3 and not fail.timed_out,
        "its output is kept": "failing on purpose" in fail.tail(),
    }
    ok = all(checks.values())
    return StageResult("passed" if ok else "failed",
                       f"{sum(checks.values())}/{len(checks)} runner checks hold", dict(checks=checks),
                       [hang.command, fail.command], [str(hang.log)])


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


def stage_injected(kind: str) -> Callable:
    def run(ctx: Context, timeout: float) -> StageResult:
        code = "import sys; print('injected failure'); sys.exit(7)" if kind == "fail" else \
            "import time; print('injected hang', flush=True); time.sleep(3600)"
        o = ctx.run([sys.executable, "-c", code], "injected", min(timeout, 1.0) if kind == "hang" else timeout)
        return _failed(o, f"injected {kind} (GPU_CHECK_INJECT)") if not o.ok else \
            StageResult("passed", "injected stage passed", {})
    return run


# ======================================================================================================= stages
@dataclass
class Stage:
    name: str
    title: str
    run: Callable
    estimate: float   # seconds on one H100 with a fresh machine (docs/gpu-check.md explains each)
    floor: float      # seconds kept for it while earlier stages run
    cap: float        # its timeout at most
    default: bool = True   # in the default GPU run
    dry: bool = True       # in the default dry run


STAGES = [
    Stage("environment", "Device and versions", stage_environment, 10, 20, 45),
    Stage("build", "Build", stage_build, 150, 120, 300),
    Stage("fit-launch", "CUDA fit: launch shape for the paper configuration", stage_fit_launch, 10, 20, 60),
    Stage("decision", "Attention backend decision: Triton vs SDPA at the paper's shapes", stage_decision, 60, 45,
          120),
    Stage("benchmarks", "Benchmarks", stage_benchmarks, 90, 60, 180),
    Stage("tests", "Tests", stage_tests, 200, 120, 600),
    Stage("selfcheck", "Runner self-check", stage_selfcheck, 3, 5, 30, default=False),
    Stage("experiment", "Experiment: random vs mimetic vs impulse init", stage_experiment, 480, 120, 540,
          default=False),
]
BY_NAME = {s.name: s for s in STAGES}


def stage_timeout(ctx: Context, stage: Stage, later: List[Stage]) -> float:
    """Its cap, less what the later stages must keep, never more than what is left; 0: no time left."""
    left = ctx.remaining()
    keep = sum(s.floor for s in later)
    return max(0.0, min(stage.cap, max(left - keep, min(stage.floor, left))))


# ====================================================================================================== report
def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(head: List[str], rows: List[list]) -> List[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _block(text: str, lines: int = 40) -> List[str]:
    body = "\n".join(str(text).rstrip().splitlines()[-lines:]).replace("```", "'''")
    return ["```", body, "```"] if body.strip() else []


def _from_other_run(ctx: Context, r: dict) -> str:
    return "" if r.get("run_id") == ctx.run_id else f" (from the run of {r.get('run_id')}, kept in {ctx.rel(ctx.out)})"


def render(ctx: Context, results: Dict[str, dict], selected: List[str]) -> str:
    shown = [s for s in STAGES if s.name in results]
    this_run = [results[n] for n in selected if n in results]
    failed = [r["stage"] for r in this_run if r["status"] != "passed"]
    pending = [n for n in selected if n not in results]
    verdict = "PASSED" if not failed and not pending else "FAILED" if failed else "INCOMPLETE"
    out = ["# GPU check report", ""]
    if ctx.dry:
        out += ["**DRY RUN on the CPU: no GPU was used. Nothing here measures a GPU; it shows that the stages, "
                "their command lines and this report work.**", ""]
    out += [f"Written by `make gpu-check` (`benchmarks/gpu_check.py`, documented in `docs/gpu-check.md`) at "
            f"{ctx.run_id}, {ctx.elapsed():.0f} s into a budget of {ctx.budget:.0f} s.", "",
            f"**Result of this run: {verdict}** — stages run: {', '.join(selected)}"
            + (f"; not passed: {', '.join(failed)}" if failed else "")
            + (f"; still to run: {', '.join(pending)}" if pending else "") + ".", ""]

    out += ["## Summary", ""]
    rows = []
    for s in STAGES:
        r = results.get(s.name)
        if r is None:
            if s.default or (ctx.dry and s.dry):
                rows.append([s.name, "not run", "—", "—", f"{s.estimate:.0f} s", ""])
            continue
        rows.append([s.name, r["status"] + ("" if r.get("run_id") == ctx.run_id else " (earlier run)"),
                     f"{r.get('seconds', 0):.0f} s", f"{r.get('timeout', 0):.0f} s", f"{s.estimate:.0f} s",
                     r.get("summary", "")])
    out += _table(["stage", "status", "took", "timeout", "H100 estimate", "summary"], rows) + [""]

    renderers = {"environment": _render_environment, "build": _render_build, "fit-launch": _render_fit,
                 "decision": _render_decision, "benchmarks": _render_benchmarks, "tests": _render_tests,
                 "experiment": _render_experiment, "selfcheck": _render_selfcheck}
    for title, name in zip(SECTIONS[1:-1], ("environment", "build", "fit-launch", "decision", "benchmarks",
                                             "tests", "experiment", "selfcheck")):
        out += [f"## {title}", ""]
        r = results.get(name)
        if r is None:
            how = {"experiment": "`make gpu-check GPU_CHECK_STAGES=experiment` (about 8 minutes on an H100)",
                   "selfcheck": "the dry run (`make gpu-check DRY_RUN=1`)"}.get(name, "`make gpu-check`")
            out += [f"Not run in this report; it runs with {how}.", ""]
            continue
        out += [f"Status: **{r['status']}** in {r.get('seconds', 0):.0f} s (timeout {r.get('timeout', 0):.0f} s)"
                f"{_from_other_run(ctx, r)}. {r.get('summary', '')}", ""]
        try:
            out += renderers[name](ctx, r)
        except Exception as e:  # a report that cannot show one stage's data must still show the rest
            out += [f"(this section could not be rendered: {type(e).__name__}: {e})", ""]
        if r.get("data", {}).get("log_tail") and r["status"] != "passed":
            out += ["End of the stage's log:", ""] + _block(r["data"]["log_tail"]) + [""]
        for hint in r.get("data", {}).get("hints", []):
            out += [f"Hint: {hint}", ""]

    out += ["## Commands and logs", ""]
    for s in shown:
        r = results[s.name]
        for c in r.get("commands", []):
            out += [f"- {s.name}: `{c}`"]
        for log in r.get("logs", []):
            out += [f"- {s.name} log: `{ctx.rel(Path(log))}`"]
    out += ["", f"Stage results (JSON) and logs: `{ctx.rel(ctx.out)}`.", ""]
    return "\n".join(out)


def _render_environment(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    v = d.get("versions", {})
    smi = (d.get("nvidia_smi") or {}).get("gpus") or []
    rows = []
    for i, dev in enumerate(d.get("devices", [])):
        rows.append([f"GPU {i}", f"{dev['name']}, {dev['memory_gib']} GiB, {dev['sms']} SMs"])
        rows.append([f"GPU {i} compute capability", f"{dev['major']}.{dev['minor']}"])
    if not d.get("devices"):
        rows.append(["GPU", "none visible" + (" (the dry run hides CUDA)" if ctx.dry else "")])
    rows += [["driver", ", ".join(g.get("driver", "?") for g in smi) or "nvidia-smi not available"],
             ["driver CUDA API", d.get("driver_cuda_api", "—")],
             ["CUDA (torch build)", d.get("torch_cuda")], ["cuDNN", d.get("cudnn", "—")],
             ["nvcc", f"{d.get('nvcc')} (CUDA_HOME {d.get('cuda_home')}: {d.get('cuda_home_source')})"],
             ["TORCH_CUDA_ARCH_LIST", f"{d.get('arch_list')} ({d.get('arch_source')})"],
             ["bfloat16 supported", d.get("bf16", "—")], ["Python", d.get("python")],
             ["platform", d.get("platform")], ["CPU cores", d.get("cpu_count")], ["MAX_JOBS", d.get("max_jobs")]]
    rows += [[name, v.get(name) or "**not installed**"] for name in
             ("torch", "triton", "torchvision", "numpy", "pytest", "pytest-benchmark", "setuptools", "pip", "wheel",
              "ninja")]
    return _table(["", ""], rows) + [""]


def _render_build(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    ver = d.get("verify", {})
    rows = [["command", f"`{r['commands'][0]}`" if r.get("commands") else "—"],
            ["pip time", f"{d.get('pip_seconds', '—')} s"],
            ["CUDA_HOME", f"{d.get('cuda_home')} ({d.get('cuda_home_source')})"],
            ["TORCH_CUDA_ARCH_LIST", f"{d.get('arch_list')} ({d.get('arch_source')})"],
            ["MAX_JOBS", d.get("max_jobs")],
            ["extension", ver.get("extension", "—")], ["CUDA kernels compiled in", ver.get("has_cuda", "—")],
            ["package imported from this checkout", ver.get("package_in_repo", "—")],
            ["CPU instruction set", ver.get("cpu_isa", "—")]]
    out = _table(["", ""], rows) + [""]
    if ver.get("backends"):
        out += ["`impulse_attn.backends()` after the build:", ""]
        out += _table(["backend", "state"], [[k, v] for k, v in ver["backends"].items()]) + [""]
    return out


def _render_fit(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    p = d.get("problem", {})
    out = [f"Problem: {p.get('layers')} layers × {p.get('heads')} heads, N = {p.get('n')}, D = {p.get('d')}, "
           f"r = {p.get('r')}, basis {p.get('basis')} (the paper's configuration, docs/kernels/fit_cuda.md).", ""]
    lim = d.get("limits", {})
    out += [("Limits (" + ("an H100's, from the docs: dry run" if d.get("simulated") else "read from this GPU by "
             "`_C.cuda_launch_limits()`") + "): " + ", ".join(f"{k} {v}" for k, v in lim.items())), ""]
    out += _table(["", ""], [["planner's choice (`_C.plan_launch`)", d.get("planned_shape")],
                            ["shape the launch took (`_C.cuda_last_launch_shape()`)",
                             "— (nothing launched)" if d.get("simulated") else d.get("launched_shape")],
                            ["documented for this GPU", d.get("expected_shape", "—")],
                            ["max |ΔQ| CUDA vs CPU after 20 steps",
                             _f(d.get("max_abs_dq_cuda_vs_cpu_20_steps"), ".1e")],
                            ["time per step (500 steps, all 48 heads)",
                             _f(d.get("ms_per_step_500_steps"), ".3f", " ms")]])
    out += ["", "Feasible launch shapes in the planner's order:", ""]
    out += _table(["shape", "blocks per head", "state", "B", "tile rows", "dynamic bytes", "launches", "description"],
                  [[q["shape"], q["cluster"], q["state"], q["b"], q["tile_rows"], q["dynamic_bytes"], q["launches"],
                    q["description"]] for q in d.get("plans", [])])
    if not d.get("plans"):
        out += ["", f"No feasible shape: {d.get('reason')}"]
    return out + [""]


def _render_decision(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    out = [f"Device: {d.get('device')}. Kernel times are medians of `triton.testing.do_bench` (CUDA events); "
           "\"sdpa\" is `F.scaled_dot_product_attention` with torch's own choice (what attention_backend=\"sdpa\" "
           "runs), the `sdpa-*` columns force one SDPA backend. Ratio > 1: Triton is faster.", ""]
    names = []
    for row in d.get("kernels", []):
        names += [n for n in row["ms"] if n not in names]
    rows = []
    for row in d.get("kernels", []):
        rows.append([row["dtype"], row["mode"], "×".join(map(str, row["shape"]))]
                    + [_f(row["ms"].get(n), ".3f") for n in names] + [f"{row['sdpa_over_triton']:.2f}"])
    out += _table(["dtype", "pass", "B×H×N×d"] + [f"{n} ms" for n in names] + ["SDPA/Triton"], rows) + [""]
    for row in d.get("kernels", []):
        for n, why in row.get("unavailable", {}).items():
            out += [f"- {row['dtype']} {row['mode']}: {n} unavailable: {why}"]
    m = d.get("model", {})
    if m:
        c = m.get("config", {})
        out += ["", f"SimpleViT training step (dim {c.get('dim')}, depth {c.get('depth')}, {c.get('num_heads')}×"
                f"{c.get('head_dim')}, {c.get('image_size') // c.get('patch_size', 1)}² tokens, batch "
                f"{m.get('batch')}, mixed precision {m.get('amp')}, Adam), alternated, median of {m.get('timed')} "
                f"after {m.get('warmup')} warm-up steps each:", ""]
        out += _table(["backend", "median ms", "min ms"],
                      [[k, f"{m['median_ms'][k]:.2f}", f"{m['min_ms'][k]:.2f}"] for k in m.get("median_ms", {})])
        out += ["", f"SDPA/Triton step time: {m.get('sdpa_over_triton', float('nan')):.3f}"]
    out += ["", f"**Decision data:** {d.get('verdict')}", ""]
    return out


def _render_benchmarks(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    out = []
    if d.get("rows"):
        out += _table(["benchmark", "measured", "baseline", "ratio", "target"],
                      [[x["nodeid"].split("/")[-1], x["measured"], x["baseline"], x["ratio"], x["target"]]
                       for x in d["rows"]]) + [""]
        details = [f"- `{x['nodeid'].split('/')[-1]}`: {x['detail']}" for x in d["rows"] if x.get("detail")]
        out += details + ([""] if details else [])
    out += _render_test_list(ctx, d, "benchmark")
    return out


def _render_tests(ctx: Context, r: dict) -> List[str]:
    return _render_test_list(ctx, r["data"], "test")


def _render_test_list(ctx: Context, d: dict, what: str) -> List[str]:
    out = []
    tests = d.get("tests", [])
    files: Dict[str, Dict[str, int]] = {}
    for t in tests:
        f = t["nodeid"].split("::")[0]
        files.setdefault(f, {})
        files[f][t["outcome"]] = files[f].get(t["outcome"], 0) + 1
    for s in d.get("collect_skips", []):
        files.setdefault(s["nodeid"], {})
    if files:
        out += _table(["file", "outcomes"], [[f, _count_text(c) if c else "—"] for f, c in files.items()]) + [""]
    for s in d.get("collect_skips", []):
        out += [f"- `{s['nodeid']}` skipped at collection: {s['reason']}"]
    for e in d.get("collect_errors", []):
        out += [f"- `{e['nodeid']}`: collection error:", ""] + _block(e["text"], 30)
    bad = [t for t in tests if t["outcome"] in ("failed", "error", "timeout", "skipped")]
    if bad:
        out += ["", f"### {what.capitalize()}s that did not pass", ""]
        for t in bad:
            out += [f"- `{t['nodeid']}`: **{t['outcome']}**" + (f" — {t['detail']}" if t["outcome"] == "skipped"
                                                                 else "")]
            if t.get("detail") and t["outcome"] in ("failed", "error"):
                out += [""] + _block(t["detail"], 30) + [""]
            if t["outcome"] == "timeout":
                out += ["  (it was running when the stage's timeout ended the run)"]
    if tests:
        out += ["", f"### Every {what}", ""]
        out += _table([what, "outcome", "seconds"],
                      [[t["nodeid"], t["outcome"], f"{t.get('seconds', 0):.2f}"] for t in tests])
    return out + [""]


def _render_experiment(ctx: Context, r: dict) -> List[str]:
    d = r["data"]
    fl = d.get("flops", {})
    cal = d.get("calibration") or {}
    out = [f"Command (the package's own CLI): `{r['commands'][-1]}`" if r.get("commands") else "", "",
           f"Data: `{d.get('data_dir')}` ({', '.join(f'{k} {v}' for k, v in d.get('data_counts', {}).items())}). "
           "Settings are chosen on val; test is reported beside it.", ""]
    out += _table(["", ""], [
        ["FLOPs per image (forward / training step)",
         f"{_flop(fl.get('forward_per_image'))} / {_flop(fl.get('train_per_image'))}"],
        [f"FLOPs per training epoch ({fl.get('train_images')} images) / per evaluation ({fl.get('eval_images')})",
         f"{_flop(fl.get('train_epoch'))} / {_flop(fl.get('evaluation'))}"],
        ["calibration (2 epochs of one init)",
         f"{_f(cal.get('train_epoch_s'), '.2f', ' s')} per training epoch, {_f(cal.get('eval_s'), '.2f', ' s')} per "
         f"evaluation, {_f(cal.get('overhead_s'), '.1f', ' s')} per run outside epochs" if cal else "—"],
        ["achieved in training", _f(d.get("measured_tflops"), ".3g", " TFLOP/s")],
        ["plan", f"epochs {d.get('epochs')}, evaluated every {d.get('eval_every')}, warm-up {d.get('warmup_epochs')}"
                 f" epochs; predicted {_f(d.get('predicted_s'), '.0f', ' s')} of a {d.get('target_s', 0):.0f} s "
                 f"budget; epochs from {d.get('epochs_from')}"],
        ["compare took", f"{d.get('compare_seconds')} s"]]) + [""]
    res = d.get("results", {})
    if res.get("setting"):
        out += [res["setting"], ""]
    if res.get("table"):
        out += ["Table written by `impulse-attn compare` (accuracies in %):", ""] + res["table"] + [""]
    if res.get("variants"):
        out += ["Selected on val (best val epoch), test at that epoch:", ""]
        out += _table(["init", "best val epoch", "val acc", "test acc there", "final val", "final test",
                       "train s", "img/s"],
                      [[k, v.get("best_epoch"), _f(v.get("best_val"), ".1%"), _f(v.get("test_at_best_val"), ".1%"),
                        _f(v.get("final_val"), ".1%"), _f(v.get("final_test"), ".1%"),
                        _f(v.get("train_seconds"), ".0f"), _f(v.get("images_per_s"), ".0f")]
                       for k, v in res["variants"].items()]) + [""]
    if res.get("curves"):
        src = Path(res["curves"])
        dest = ctx.report.parent / f"{ctx.report.stem}-curves.png"
        try:
            if src.exists():
                ctx.report.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            out += [f"![accuracy curves]({dest.name})", ""]
        except OSError:
            out += [f"Curves: `{ctx.rel(src)}`", ""]
    return out


def _render_selfcheck(ctx: Context, r: dict) -> List[str]:
    return _table(["check", "holds"], [[k, v] for k, v in r["data"].get("checks", {}).items()]) + [""]


# ======================================================================================================== main
def _record(ctx: Context, stage: Stage, res: StageResult, seconds: float, timeout: float) -> dict:
    rec = dict(stage=stage.name, title=stage.title, run_id=ctx.run_id, dry_run=ctx.dry, seconds=round(seconds, 1),
               timeout=round(timeout, 1), estimate=stage.estimate, **dataclasses.asdict(res))
    _write_json(ctx.out / "results" / f"{stage.name}.json", rec)
    return rec


def _load_results(ctx: Context) -> Dict[str, dict]:
    found = {}
    for path in sorted((ctx.out / "results").glob("*.json")):
        r = _read_json(path)
        if isinstance(r, dict) and r.get("stage") in BY_NAME and bool(r.get("dry_run")) == ctx.dry:
            found[r["stage"]] = r
    return found


def _write_report(ctx: Context, results: Dict[str, dict], selected: List[str]) -> None:
    ctx.report.parent.mkdir(parents=True, exist_ok=True)
    tmp = ctx.report.with_suffix(ctx.report.suffix + ".tmp")
    tmp.write_text(render(ctx, results, selected), encoding="utf-8")
    tmp.replace(ctx.report)


def _truthy(text: Optional[str]) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv):
    p = argparse.ArgumentParser(description="The GPU acceptance run (docs/gpu-check.md).")
    p.add_argument("--dry-run", action="store_true", default=_truthy(os.environ.get("GPU_CHECK_DRY_RUN")),
                   help="everything on the CPU, the GPU untouched (GPU_CHECK_DRY_RUN=1)")
    p.add_argument("--stages", default=os.environ.get("GPU_CHECK_STAGES", ""),
                   help=f"comma-separated, from {', '.join(BY_NAME)} (GPU_CHECK_STAGES)")
    p.add_argument("--report", default=os.environ.get("GPU_CHECK_REPORT", ""), help="report path (GPU_CHECK_REPORT)")
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", ""), help="results folder (GPU_CHECK_OUT)")
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET") or DEFAULT_BUDGET),
                   help="seconds for the whole run (GPU_CHECK_BUDGET)")
    p.add_argument("--list", action="store_true", help="list the stages and their budgets, then exit")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args(argv)


CHILDREN = {"environment": child_environment, "verify-build": child_verify_build, "fit-launch": child_fit_launch,
            "decision": child_decision}


def _child_main(args) -> int:
    if args.child == "pytest":
        import pytest
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return int(pytest.main(rest, plugins=[_recorder(Path(args.result))]))
    data = CHILDREN[args.child](args)
    _write_json(Path(args.result), data)
    return 0


def _recorder(path: Path):
    """A pytest plugin writing one JSON line per event, flushed at once: a stage ended by its timeout still leaves
    the outcome of every test that finished and the name of the one that was running."""
    import pytest

    def tail(text: str, lines: int = 40) -> str:
        return "\n".join(str(text).splitlines()[-lines:])

    def reason(report) -> str:
        lr = report.longrepr
        if isinstance(lr, tuple) and len(lr) == 3:
            return str(lr[2]).removeprefix("Skipped: ")
        return tail(str(lr), 3)

    class Recorder:
        def __init__(self):
            self.f = open(path, "a", encoding="utf-8")

        def write(self, **rec):
            self.f.write(json.dumps(rec, default=str) + "\n")
            self.f.flush()

        def pytest_collectreport(self, report):
            if report.failed:
                self.write(event="collect-error", nodeid=report.nodeid, text=tail(report.longreprtext))
            elif report.skipped:
                self.write(event="collect-skip", nodeid=report.nodeid, reason=reason(report))

        def pytest_collection_finish(self, session):
            self.write(event="collected", nodeids=[item.nodeid for item in session.items])

        def pytest_runtest_logstart(self, nodeid, location):
            self.write(event="start", nodeid=nodeid)

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(self, item, call):
            yield
            fixture = getattr(item, "funcargs", {}).get("benchmark") if call.when == "call" else None
            if fixture is not None and hasattr(fixture, "extra_info"):
                meta = getattr(fixture, "stats", None)
                stats = getattr(meta, "stats", None)
                self.write(event="benchmark", nodeid=item.nodeid, extra_info=dict(fixture.extra_info),
                           stats={k: getattr(stats, k, None) for k in ("min", "max", "mean", "median", "rounds")}
                           if stats is not None else {})

        def pytest_runtest_logreport(self, report):
            rec = dict(event="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
                       duration=report.duration)
            if report.failed:
                rec["text"] = tail(report.longreprtext)
            elif report.skipped:
                rec["reason"] = reason(report)
            if hasattr(report, "wasxfail"):
                rec["xfail"] = report.wasxfail
            self.write(**rec)

        def pytest_sessionfinish(self, session, exitstatus):
            self.write(event="finish", exitstatus=int(exitstatus))

    return Recorder()


def _parse_inject(text: str) -> Dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        name, _, kind = item.partition("=")
        if name not in BY_NAME or kind not in ("fail", "hang"):
            raise SystemExit(f"gpu_check: GPU_CHECK_INJECT item {item!r}: expected STAGE=fail or STAGE=hang")
        out[name] = kind
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child_main(args)
    dry = args.dry_run
    if args.list:
        for s in STAGES:
            print(f"{s.name:12s} H100 estimate {s.estimate:4.0f} s, timeout at most {s.cap:4.0f} s, kept for it "
                  f"{s.floor:4.0f} s; default run: {'yes' if s.default else 'no'}; dry run: {'yes' if s.dry else 'no'}"
                  f"  ({s.title})")
        return 0
    names = [n.strip() for n in args.stages.split(",") if n.strip()] or \
        [s.name for s in STAGES if (s.dry if dry else s.default)]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"gpu_check: unknown stage(s) {unknown}; stages: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    selected = [s.name for s in STAGES if s.name in names]  # always in pipeline order
    out = Path(args.out or ("runs/gpu-check-dry" if dry else "runs/gpu-check"))
    out = out if out.is_absolute() else REPO / out
    report = Path(args.report or (str(out / "report.md") if dry else "docs/gpu-check-report.md"))
    report = report if report.is_absolute() else REPO / report
    exp_epochs = os.environ.get("GPU_CHECK_EXP_EPOCHS")
    ctx = Context(dry=dry, out=out, report=report, budget=args.budget, inject=_parse_inject(
                  os.environ.get("GPU_CHECK_INJECT", "")),
                  exp_data=os.environ.get("GPU_CHECK_EXP_DATA") or "../shared/data/cifar10-mini",
                  exp_augment=os.environ.get("GPU_CHECK_EXP_AUGMENT") or "flip-crop",
                  exp_epochs=int(exp_epochs) if exp_epochs else None,
                  exp_args=shlex.split(os.environ.get("GPU_CHECK_EXP_ARGS", "")))
    (out / "results").mkdir(parents=True, exist_ok=True)
    results = _load_results(ctx)
    print(f"gpu-check{' (DRY RUN: CPU only)' if dry else ''}: stages {', '.join(selected)}; budget "
          f"{ctx.budget:.0f} s; report {ctx.rel(report)}", flush=True)
    for name in selected:
        results.pop(name, None)  # replaced by this run's
    _write_report(ctx, results, selected)
    interrupted = False
    for i, name in enumerate(selected):
        stage = BY_NAME[name]
        timeout = stage_timeout(ctx, stage, [BY_NAME[n] for n in selected[i + 1:]])
        start = time.monotonic()
        if interrupted:
            res = StageResult("not run", "the run was interrupted")
        elif timeout < 5:
            res = StageResult("not run", f"no time left in the {ctx.budget:.0f} s budget")
        else:
            fn = stage_injected(ctx.inject[name]) if name in ctx.inject else stage.run
            print(f"[{name}] running (timeout {timeout:.0f} s) ...", flush=True)
            try:
                res = fn(ctx, timeout)
            except KeyboardInterrupt:
                if ctx.current is not None:
                    _kill_group(ctx.current)
                res, interrupted = StageResult("error", "interrupted (Ctrl-C)"), True
            except Exception as e:  # a bug in one stage must not stop the others
                res = StageResult("error", f"{type(e).__name__}: {e}", dict(log_tail=traceback.format_exc()))
        if res.status not in STATUSES:
            res.status = "error"
        results[name] = _record(ctx, stage, res, time.monotonic() - start, timeout)
        print(f"[{name}] {res.status} in {time.monotonic() - start:.0f} s: {res.summary}", flush=True)
        _write_report(ctx, results, selected)
    bad = [n for n in selected if results[n]["status"] != "passed"]
    print(f"gpu-check: {'all stages passed' if not bad else 'not passed: ' + ', '.join(bad)} in "
          f"{ctx.elapsed():.0f} s; report: {ctx.rel(report)}", flush=True)
    return 130 if interrupted else (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())
