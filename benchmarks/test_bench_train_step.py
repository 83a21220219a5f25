"""One training step of SimpleViT at the CPU-sized configuration: ImpulseAttention (each backend) against the
same model whose attention layers are a plain fused-qkv scaled_dot_product_attention layer.

The overhead of our module is printed as a ratio (target: at most 1.10) and stored in ``benchmark.extra_info``.
The ratio comes from steps of both models timed alternately in the same process, so that load from other
processes on a shared machine hits both alike: the ratio of the fastest steps (the least disturbed) is the
headline, the ratio of medians is printed beside it. pytest-benchmark's own numbers time the ImpulseAttention
step.
Run: ``pytest benchmarks/test_bench_train_step.py --benchmark-only -s``.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import impulse_attn as ia

# The size the experiments and the demo train on this CPU (docs/RESULTS.md): a 16x16 token grid.
CFG = dict(image_size=32, patch_size=2, num_classes=10, dim=64, depth=2, num_heads=8, head_dim=16, mlp_dim=128)
BATCH = 32
ROUNDS = 20
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


class PlainSDPAAttention(nn.Module):
    """The baseline: pre-norm, one fused qkv projection, torch's scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _model(backend):
    torch.manual_seed(0)
    if backend is None:
        model = ia.SimpleViT(**CFG, init="default", attention_backend="sdpa")
        for blk in model.blocks:
            blk[0] = PlainSDPAAttention(CFG["dim"], CFG["num_heads"], CFG["head_dim"])
    else:
        model = ia.SimpleViT(**CFG, init="impulse", attention_backend=backend)
    return model.to(DEVICE)


def _step_fn(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen).to(DEVICE)
    y = torch.randint(0, 10, (BATCH,), generator=gen).to(DEVICE)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if CUDA:
            torch.cuda.synchronize()
    return step


def _interleaved(candidate, baseline, rounds: int = ROUNDS) -> tuple:
    """Step times (candidate, baseline), timed alternately after a warmup."""
    for fn in (candidate, baseline, candidate, baseline):
        fn()
    tc, tb = [], []
    for _ in range(rounds):
        for fn, acc in ((candidate, tc), (baseline, tb)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return tc, tb


def _backends():
    out = ["reference", "sdpa"]
    if CUDA and ia.backends()["attention/triton"] == "available":
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_train_step_overhead(benchmark, backend):
    if backend not in _backends():
        pytest.skip("the triton backend needs a CUDA device (the interpreter would time numpy, not the kernel)")
    candidate = _step_fn(_model(backend))
    baseline = _step_fn(_model(None))
    tc, tb = _interleaved(candidate, baseline)
    ratio, ratio_median = min(tc) / min(tb), statistics.median(tc) / statistics.median(tb)
    benchmark.extra_info.update({"backend": backend, "device": DEVICE, "batch": BATCH, **CFG,
                                 "min_step_s": min(tc), "baseline_min_step_s": min(tb),
                                 "median_step_s": statistics.median(tc),
                                 "baseline_median_step_s": statistics.median(tb),
                                 "ratio_vs_plain_sdpa": ratio, "ratio_of_medians": ratio_median})
    print(f"\ntrain step, SimpleViT {CFG['dim']}x{CFG['depth']} 16x16 grid, batch {BATCH} on {DEVICE}: "
          f"ImpulseAttention[{backend}] {1e3 * min(tc):.1f} ms vs plain SDPA {1e3 * min(tb):.1f} ms (fastest of "
          f"{len(tc)}) -> ratio {ratio:.3f} (medians: {ratio_median:.3f}; target <= 1.10)")
    benchmark.pedantic(candidate, rounds=5, warmup_rounds=1)
