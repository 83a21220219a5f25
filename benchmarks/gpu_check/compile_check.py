"""Stage "compile": torch.compile of SimpleViT's forward and backward with each backend, in float32 and bf16
autocast, against eager, and one graph per model (tests/gpu/test_training_gpu.py), plus the Triton op under
inductor (tests/gpu/test_triton_attention_gpu.py)."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

SELECTION = ["tests/gpu/test_training_gpu.py", "tests/gpu/test_triton_attention_gpu.py", "-k",
             "torch_compile or one_graph"]


def run(ctx: Context, timeout: float) -> StageResult:
    return run_pytest(ctx, "compile", SELECTION, timeout)
