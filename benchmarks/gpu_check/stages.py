"""The stages in pipeline order with their time budgets: declared data, summed by tests/test_gpu_check.py.

Order by value: what everything else needs (the build), then correctness against float64 truth (the CUDA fit,
then attention: SDPA, then the Triton kernel, bfloat16 first), then the measurements the backend policy waits
for (P4, P5), then training and compilation, which use all of the above.

Budgets are seconds on one H100/H200 (sm_90) from a fresh machine, each a hard limit: the stage's children are
ended within it (SIGTERM 2.5 s before its end, SIGKILL 0.5 s before: runner.kill_margins). They are estimates; no
GPU has run this yet. For the pytest stages, most of the time is compiling, so each budget is checked
(tests/test_gpu_check.py, and every run, dry or not, in figures.json under "compiles") against

    compiles.COSTS["start"] + Stage.run_s + Triton compiles × 2 s + inductor compiles × 15 s + autotuned configs × 0.3 s

which must fit in the budget less the 2.5 s before it at which its children are ended (runner.kill_margins),
with the compiles counted from the stage's own tests (benchmarks/gpu_check/compiles.py; a kernel key an earlier
stage compiled is in Triton's on-disk cache and costs nothing). As counted for this selection:

- build 110 s: importing torch (≈ 10 s), nvcc for sm_90 and three C++ files with torch's headers on 16 cores;
- fit-parity 35 s: the CUDA fit's launch shapes against the CPU twin at small sizes and the paper's size;
- attention-parity 80 s: 26 Triton compiles (the autotuned bfloat16 kernels at the paper's shape: 10; pinned
  bfloat16 at d = 64 and 128, float16 at d = 48, float32 at d = 80: 4 each) ≈ 52 s, 9 autotuned configs;
- benchmarks 40 s: no new compile (the paper's shape was compiled above), autotuning at N = 64 and 256, SDPA's
  four backends, the CUDA fit's 10,000 steps;
- training 35 s: no new compile (two heads, not one: H = 1 would be a new specialization), 3 modes × 4 runs of
  a few Adam steps of the paper's SimpleViT, two short ``impulse-attn train``;
- compile 48 s: two cold inductor compiles of a small SimpleViT's forward and backward, one per backend.

START_ALLOWANCE covers what lies outside the stages: make and Python starting (the runner imports no torch), the
report rewritten after each stage; a stage's children end within the stage's budget, probes included. The whole
run must fit in 6 minutes: sum of budgets + START_ALLOWANCE ≤ LIMIT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import attention_parity, bench, build, compile_check, fit_parity, selfcheck, training

LIMIT = 360.0
START_ALLOWANCE = 12.0


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable
    budget: float          # seconds on one H100/H200, a hard limit
    gpu: bool = True       # in the GPU run (else: dry run only)
    run_s: float = 0.0     # what its tests take beyond start-up and compiling (stated estimate; pytest stages)


STAGES = [
    # The dry run checks the runner itself first: killing, recording (tests/test_gpu_check.py relies on its speed).
    Stage("selfcheck", "Runner self-check (dry run)", selfcheck.run, 15, gpu=False),
    Stage("build", "Build and environment", build.run, 110),
    Stage("fit-parity", "CUDA fit parity (float64 truth)", fit_parity.run, 35, run_s=20),
    Stage("attention-parity", "Attention parity: SDPA, then Triton (float64 truth on the GPU)",
          attention_parity.run, 80, run_s=10),
    Stage("benchmarks", "Benchmarks P4 (Triton vs SDPA) and P5 (CUDA fit, 10,000 steps)", bench.run, 40, run_s=15),
    Stage("training", "Short training run per backend", training.run, 35, run_s=15),
    Stage("compile", "torch.compile", compile_check.run, 48, run_s=5),
]
BY_NAME = {s.name: s for s in STAGES}


def gpu_total() -> float:
    """Seconds the GPU run may take at most: every GPU stage's budget and the start allowance."""
    return sum(s.budget for s in STAGES if s.gpu) + START_ALLOWANCE
