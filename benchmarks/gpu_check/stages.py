"""The stages in pipeline order with their time budgets: declared data, summed by tests/test_gpu_check.py.

Order by value: what everything else needs (the build), then correctness against float64 truth (the CUDA fit,
then attention: SDPA, then the Triton kernel, bfloat16 first), then the measurements the backend policy waits
for (P4, P5), then training and compilation, which use all of the above.

Budgets are seconds on one H200 (sm_90) from a fresh machine, each a hard limit: the stage's children are killed
when it is spent (SIGTERM, then SIGKILL after ``runner.KILL_GRACE``, both inside the budget). They are estimates;
no GPU has run this yet:

- build 110 s: importing torch (≈ 10 s), nvcc for sm_90 and three C++ files with torch's headers on 16 cores;
- fit-parity 35 s: the CUDA fit's launch shapes against the CPU twin at small sizes and the paper's size;
- attention-parity 80 s: Triton compiles about 30 kernels (pinned configs per dtype and head dim, then the
  autotuned test over the pruned space: 9 configs per 16-bit dtype, 6 for float32) at ≈ 1-2 s each;
- benchmarks 45 s: autotuning at N = 64 and 256 in bfloat16, SDPA's four backends, the CUDA fit's 10,000 steps;
- training 40 s: 3 modes × 3 runs of a few Adam steps of the paper's SimpleViT, two short ``impulse-attn train``;
- compile 30 s: four torch.compile runs of a small SimpleViT and one of the Triton op under inductor.

START_ALLOWANCE covers what lies outside the stages: make and Python starting, the report rewritten after each
stage. The whole run must fit in 6 minutes: sum of budgets + START_ALLOWANCE ≤ LIMIT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import attention_parity, bench, build, compile_check, fit_parity, selfcheck, training

LIMIT = 360.0
START_ALLOWANCE = 15.0


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable
    budget: float          # seconds on one H200, a hard limit
    gpu: bool = True       # in the GPU run (else: dry run only)


STAGES = [
    # The dry run checks the runner itself first: killing, recording (tests/test_gpu_check.py relies on its speed).
    Stage("selfcheck", "Runner self-check (dry run)", selfcheck.run, 15, gpu=False),
    Stage("build", "Build and environment", build.run, 110),
    Stage("fit-parity", "CUDA fit parity (float64 truth)", fit_parity.run, 35),
    Stage("attention-parity", "Attention parity: SDPA, then Triton (float64 truth on the GPU)",
          attention_parity.run, 80),
    Stage("benchmarks", "Benchmarks P4 (Triton vs SDPA) and P5 (CUDA fit, 10,000 steps)", bench.run, 45),
    Stage("training", "Short training run per backend", training.run, 40),
    Stage("compile", "torch.compile", compile_check.run, 30),
]
BY_NAME = {s.name: s for s in STAGES}


def gpu_total() -> float:
    """Seconds the GPU run may take at most: every GPU stage's budget and the start allowance."""
    return sum(s.budget for s in STAGES if s.gpu) + START_ALLOWANCE
