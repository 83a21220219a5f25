"""Stage "benchmarks": P4, the Triton kernel against every SDPA backend at ViT shapes
(benchmarks/test_bench_triton_attention.py, bfloat16, N = 64 and 256, forward and forward + backward), and P5,
the CUDA fit's 10,000 steps of the paper's configuration (benchmarks/test_bench_fit.py). Each benchmark's
``extra_info`` (times, ratios against the baseline timed in the same process) goes into figures.json."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

SELECTION = ["benchmarks/test_bench_triton_attention.py",
             "benchmarks/test_bench_fit.py::test_cuda_end_to_end_6_layers"]


def run(ctx: Context, timeout: float) -> StageResult:
    args = ["--benchmark-only"] + ([] if ctx.dry else ["-s"]) + SELECTION
    res = run_pytest(ctx, "benchmarks", args, timeout, what="benchmarks")
    ratios = {nodeid.split("::")[-1]: b["extra_info"] for nodeid, b in res.figures.get("benchmarks", {}).items()}
    if ratios:
        res.figures["extra_info"] = ratios
    return res
