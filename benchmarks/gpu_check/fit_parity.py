"""Stage "fit-parity": the CUDA fit against its CPU twin and float64 truth, every launch shape, the paper's
configuration (tests/gpu/test_fit_cuda_gpu.py)."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

FILES = ["tests/gpu/test_fit_cuda_gpu.py"]


def run(ctx: Context, timeout: float) -> StageResult:
    return run_pytest(ctx, "fit-parity", FILES, timeout)
