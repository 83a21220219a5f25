"""Stage "training": a short training run per attention backend on the GPU: bf16-autocast Adam steps of the
paper's SimpleViT with "triton" and "sdpa" against float32 attention (modes I, II, III), and ``impulse-attn
train`` on CUDA with each backend (tests/gpu/test_training_gpu.py)."""
from __future__ import annotations

from .pytest_stage import run_pytest
from .runner import Context, StageResult

SELECTION = ["tests/gpu/test_training_gpu.py", "-k", "amp_steps or training_command"]


def run(ctx: Context, timeout: float) -> StageResult:
    return run_pytest(ctx, "training", SELECTION, timeout)
