"""Stage "attention-parity": attention against float64 truth computed on the GPU, SDPA first (the backend policy's
parity probes, tests/gpu/test_backends_gpu.py), then the Triton kernel (tests/gpu/test_triton_attention_gpu.py:
bfloat16 first; the autotuned kernels at the paper's shape and every config of their space, pinned configs
elsewhere, the 1% mutation test), then its strided, broadcast and empty inputs
(tests/gpu/test_fast_paths_extra_gpu.py). One row per test in the report; what they compile is counted
(compiles.py) and checked against the budget."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

FILES = ["tests/gpu/test_backends_gpu.py", "tests/gpu/test_triton_attention_gpu.py",
         "tests/gpu/test_fast_paths_extra_gpu.py"]


def run(ctx: Context, timeout: float) -> StageResult:
    return run_pytest(ctx, "attention-parity", FILES, timeout)
