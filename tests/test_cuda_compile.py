"""The CUDA sources compile wherever nvcc exists (no GPU needed), and an installed build that could include them
does. A compile failure fails this test (and the install, which compiles the same file).

fit_cuda.cu includes no torch headers, so nvcc compiles it alone in a few seconds for both target architectures.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
ARCHS = ("80", "90")


def _nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cand = Path(os.environ[var]) / "bin" / "nvcc"
            if cand.exists():
                return str(cand)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda/bin/nvcc"
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME to compile-check the kernels)")


def _compile(source: Path, out: Path, include: Path = CSRC, archs=ARCHS) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-std=c++17", "-O3", "-c", str(source), "-o", str(out), "-I", str(include), "-Xcompiler", "-fPIC",
           "-Werror", "all-warnings"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _oldest_arch():
    """The oldest architecture from compute capability 7.0 up that this nvcc compiles for (7.0 before CUDA 13,
    7.5 from CUDA 13 on)."""
    res = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    archs = sorted(int(line.split("_")[1]) for line in res.stdout.split() if line.startswith("compute_"))
    archs = [a for a in archs if a >= 70]
    return str(archs[0]) if archs else "70"


def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    res = _compile(CSRC / "fit_cuda.cu", tmp_path / "fit_cuda.o")
    assert res.returncode == 0, f"nvcc failed:\n{res.stdout}\n{res.stderr}"
    assert (tmp_path / "fit_cuda.o").stat().st_size > 0


def test_cuda_kernel_compiles_for_the_oldest_supported_gpu(tmp_path):
    # The planner gives the paper's configuration a launch shape from compute capability 7.0 up, so the kernel must
    # compile there too (no sm_80+ feature outside the sm_90 cluster paths).
    arch = _oldest_arch()
    res = _compile(CSRC / "fit_cuda.cu", tmp_path / "fit_cuda_old.o", archs=(arch,))
    assert res.returncode == 0, f"nvcc (sm_{arch}) failed:\n{res.stdout}\n{res.stderr}"


def test_compile_check_fails_on_a_broken_kernel(tmp_path):
    # The check above can fail: the same command on a copy of csrc/ with one error in the kernel must fail.
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy)
    kernel = copy / "fit_cuda_kernel.cuh"
    text = kernel.read_text()
    assert "cluster_sync(cl);" in text
    kernel.write_text(text.replace("cluster_sync(cl);", "cluster_sync(cl, undefined_symbol);", 1))
    res = _compile(copy / "fit_cuda.cu", tmp_path / "broken.o", include=copy)
    assert res.returncode != 0 and "undefined_symbol" in res.stderr


def test_installed_extension_includes_cuda_when_nvcc_exists():
    try:
        from impulse_attn import _C
    except ImportError:
        pytest.skip("impulse_attn._C is not built")
    if os.environ.get("IMPULSE_ATTN_NO_CUDA", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("IMPULSE_ATTN_NO_CUDA is set")
    import torch
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build")
    assert _C.has_cuda(), "nvcc is available but impulse_attn._C was built without its CUDA kernels"
