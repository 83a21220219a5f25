"""Stage "compile": one cold torch.compile (inductor) of SimpleViT's forward and backward under bf16 autocast per
attention backend, with fullgraph=True, so each compile also proves the model is one graph; the "triton" one puts
the Triton op under inductor (tests/gpu/test_training_gpu.py)."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

SELECTION = ["tests/gpu/test_training_gpu.py", "-k", "torch_compile"]


def run(ctx: Context, timeout: float) -> StageResult:
    return run_pytest(ctx, "compile", SELECTION, timeout)
