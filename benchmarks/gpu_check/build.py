"""Stage "build": the environment's facts, then ``pip install --no-build-isolation --no-deps --no-index -e .`` with
the CUDA extension (CUDA_HOME detected, TORCH_CUDA_ARCH_LIST from the visible GPU, e.g. 9.0 on an H200), then a
child that imports the built package and says whether ``impulse_attn._C`` has its CUDA kernels. Dry run: pip's
``--dry-run`` (metadata only), CUDA hidden."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from .runner import REPO, Context, StageResult, failed, kill_group

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


def _probe(cmd: List[str], timeout: float) -> Optional[str]:
    """stdout of a short probe (nvidia-smi, nvcc --version), or None when it fails or outlives ``timeout``. It runs
    in its own process group, which is killed on the timeout, so a hung driver call cannot hold the stage."""
    if timeout <= 0:
        return None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
    except OSError:
        return None
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_group(proc, grace=0.0, reap=0.5)
        return None


def nvcc_version(cuda_home: Optional[str], timeout: float = 20.0) -> Optional[str]:
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    text = _probe([nvcc, "--version"], timeout)
    if text is None:
        return None
    m = re.search(r"release ([\d.]+), V([\d.]+)", text)
    return m.group(2) if m else (text.strip().splitlines() or [None])[-1]


def nvidia_smi(timeout: float) -> Optional[dict]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    text = _probe([exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
                  timeout)
    if text is None:
        return {"error": f"nvidia-smi did not answer within {timeout:.0f} s"}
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



def child_verify_build(args) -> dict:
    import impulse_attn
    from impulse_attn import _C
    so = Path(_C.__file__).resolve()
    return dict(has_cuda=bool(_C.has_cuda()), extension=str(so.relative_to(REPO)) if REPO in so.parents else so.name,
                package_in_repo=REPO in Path(impulse_attn.__file__).resolve().parents,
                cpu_isa=_C.cpu_isa() if hasattr(_C, "cpu_isa") else None, backends=impulse_attn.backends())



PROBE_TIMEOUT = 10.0   # s for nvidia-smi and for nvcc --version, each, within what is left of the stage


def run(ctx: Context, timeout: float) -> StageResult:
    deadline = time.monotonic() + timeout

    def left(at_most: float = float("inf"), keep: float = 0.0) -> float:
        """Seconds a step may take: at most ``at_most``, keeping ``keep`` for the steps after it; never past the
        stage's deadline (so the stage ends within its budget whatever hangs)."""
        return max(min(at_most, deadline - time.monotonic() - keep), 0.0)

    o, facts = ctx.child("environment", min(40.0, timeout / 3))
    facts = facts or {}
    facts["nvidia_smi"] = nvidia_smi(left(PROBE_TIMEOUT))
    cuda_home, how = find_cuda_home()
    facts.update(cuda_home=cuda_home, cuda_home_source=how, nvcc=nvcc_version(cuda_home, left(PROBE_TIMEOUT)))
    facts["arch_list"], facts["arch_source"] = arch_list(facts)
    facts["max_jobs"] = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)
    ctx.facts.update(facts)
    if not o.ok:
        return failed(o, "collecting versions failed", environment=facts)
    if not ctx.dry and not facts.get("cuda_available"):
        return StageResult("failed", "torch sees no CUDA device", dict(environment=facts), [o.command])
    if cuda_home is None and not ctx.dry:
        return StageResult("failed", f"no CUDA toolkit: {how}; set CUDA_HOME", dict(environment=facts), [o.command])
    extra = {"TORCH_CUDA_ARCH_LIST": facts["arch_list"], "IMPULSE_ATTN_FORCE_CUDA": "1",
             "MAX_JOBS": facts["max_jobs"], "PIP_NO_INPUT": "1"}
    if cuda_home:
        extra["CUDA_HOME"] = cuda_home
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
           "--disable-pip-version-check", "-e", "."] + (["--dry-run"] if ctx.dry else [])
    if left() < 1:
        return StageResult("timeout", "no time left for pip install", dict(environment=facts), [o.command])
    # pip gets what is left less 20 s for the import check after it (or half of what is left, when less remains)
    pip = ctx.run(cmd, left(keep=min(20.0, left() / 2)), ctx.env(extra))
    commands = [o.command, " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items()) + " " + pip.command]
    figures = dict(environment=facts, pip_seconds=round(pip.seconds, 1))
    if not pip.ok:
        res = failed(pip, "pip install failed", hints=_hints(pip.tail), **figures)
        res.commands = commands
        return res
    if left() < 1:
        res = StageResult("timeout", "no time left to check the built package", figures, commands)
        return res
    v, verify = ctx.child("verify-build", left())
    figures["verify"] = verify or {}
    commands.append(v.command)
    if not v.ok:
        res = failed(v, "the built package does not import", **figures)
        res.commands = commands
        return res
    gpu = ", ".join(f"{d['name']} ({d['major']}.{d['minor']})" for d in facts.get("devices", [])) or "no GPU"
    ver = facts.get("versions", {})
    summary = (f"{gpu}; torch {ver.get('torch')} (CUDA {facts.get('torch_cuda')}), triton {ver.get('triton')}, "
               f"nvcc {facts.get('nvcc')}; {'pip --dry-run' if ctx.dry else 'built'} in {pip.seconds:.0f} s for "
               f"TORCH_CUDA_ARCH_LIST={facts['arch_list']}; _C has CUDA kernels: {figures['verify'].get('has_cuda')}")
    ok = ctx.dry or figures["verify"].get("has_cuda")
    return StageResult("passed" if ok else "failed", summary, figures, commands, "" if ok else v.tail)
