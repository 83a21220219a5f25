"""GPU behaviour of the fast paths that tests/gpu/test_triton_attention_gpu.py and test_fit_cuda_gpu.py leave out:
the compiled Triton kernel on strided, broadcast and empty inputs, its determinism and its memory (no N×N tensor);
the compiled fit's fake implementation (torch.library.opcheck) and determinism on CUDA. Skipped without CUDA;
collected everywhere.

The strided and broadcast cases are checked bit for bit against the same inputs made contiguous, with one pinned
config: the kernels read every (batch, head, row) through its stride and copy a non-unit last stride, so the same
values meet the same instructions and must give the same bits; nothing about accuracy is assumed here (the other
file holds the kernel to float64 truth).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py
from benchmarks.gpu_check.compiles import Call, pin_for  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_guard.py
from launch_guard import declared_launches_and_no_pin_left  # noqa: E402,F401  (autouse)

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
BF16 = torch.bfloat16
# (block_m, block_n, num_warps, num_stages): these tests are about addressing, not tuning; bfloat16 at d = 64 with
# this pin is compiled by test_triton_attention_gpu.py, so nothing here compiles anew
PINNED = pin_for(BF16, 64)
NAMES = ("out", "dq", "dk", "dv")


def _twice(*shape, **kw):
    """The call under test and the contiguous one it is compared with."""
    return [Call(*shape, BF16, PINNED, **kw), Call(*shape, BF16, PINNED)]


LAUNCHES = {
    "test_fused_projection_views": lambda: _twice(4, 8, 197, 64, layout="qkv"),
    "test_transposed_head_dim": lambda: _twice(2, 4, 130, 64),   # a non-unit last stride is copied first
    "test_broadcast_upstream_gradient": lambda kind: _twice(3, 4, 197, 64, grad="batch-broadcast"
                                                            if kind == "batch broadcast" else "contiguous"),
    "test_empty_inputs": lambda shape: [],   # nothing to launch
    "test_attention_is_deterministic": lambda: _twice(8, 8, 257, 64),
    "test_no_n_by_n_tensor_is_stored": lambda: [Call(8, 8, 2048, 64, BF16, PINNED)],
    "test_fit_ops_opcheck_on_cuda": lambda: [],
    "test_fit_is_deterministic_on_cuda": lambda: [],
}


@pytest.fixture
def ta():
    from impulse_attn.attention import triton_flash
    if triton_flash._INTERPRETER:
        pytest.skip("TRITON_INTERPRET=1 is set: this module tests the compiled kernels")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("bfloat16 needs compute capability 8.0 or newer")
    with triton_flash.pinned_config(*PINNED):
        yield triton_flash


def _run(ta, q, k, v, go, scale=0.125):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = ta.flash_attention(q, k, v, scale)
    return (out, *torch.autograd.grad(out, (q, k, v), go))


def _randn(*shape, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)


def _same_bits(got, want, label):
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape and torch.equal(a, b), f"{label}: {name} differs from the contiguous run"


def test_fused_projection_views(ta):
    """q, k, v as a fused qkv projection yields them: views of one (B, N, 3, H, d) tensor, row stride 3·H·d."""
    b, n, h, d = 4, 197, 8, 64
    q, k, v = _randn(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    go = _randn(b, h, n, d, seed=1)
    assert not q.is_contiguous() and q.stride(-1) == 1
    _same_bits(_run(ta, q, k, v, go), _run(ta, q.contiguous(), k.contiguous(), v.contiguous(), go), "qkv views")


def test_transposed_head_dim(ta):
    """A non-unit stride in the head dimension (copied before the launch)."""
    b, h, n, d = 2, 4, 130, 64
    q, k, v = (_randn(b, h, d, n, seed=s).transpose(-1, -2) for s in range(3))
    go = _randn(b, h, n, d, seed=3)
    _same_bits(_run(ta, q, k, v, go), _run(ta, q.contiguous(), k.contiguous(), v.contiguous(), go), "transposed")


@pytest.mark.parametrize("kind", ["batch broadcast", "scalar broadcast"])
def test_broadcast_upstream_gradient(ta, kind):
    """Upstream gradients with stride 0: a loss that sums over the batch of one map, or out.sum()."""
    b, h, n, d = 3, 4, 197, 64
    q, k, v = (_randn(b, h, n, d, seed=s) for s in range(3))
    go = _randn(1, h, n, d, seed=4).expand(b, h, n, d) if kind == "batch broadcast" else \
        torch.ones((), device="cuda", dtype=torch.bfloat16).expand(b, h, n, d)
    _same_bits(_run(ta, q, k, v, go), _run(ta, q, k, v, go.contiguous()), kind)


@pytest.mark.parametrize("shape", [(0, 2, 16, 64), (2, 2, 0, 64)], ids=["empty batch", "empty sequence"])
def test_empty_inputs(ta, shape):
    q = torch.zeros(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = ta.flash_attention(q, q, q, 0.1)
    assert out.shape == shape
    (grad,) = torch.autograd.grad(out, (q,), torch.ones_like(out))
    assert grad.shape == shape


def test_attention_is_deterministic(ta):
    """No atomics anywhere (docs/kernels/triton_attention.md): two runs give the same bits."""
    q, k, v, go = (_randn(8, 8, 257, 64, seed=s) for s in range(4))
    _same_bits(_run(ta, q, k, v, go), _run(ta, q, k, v, go), "second run")


def test_no_n_by_n_tensor_is_stored(ta):
    """Forward and backward at N = 2048 need O, the log-sum-exp, dQ, dK, dV and δ: about four tensors of q's size.
    One N×N float32 map per head of this batch would be N·4/(d·2) = 64 times q's size."""
    b, h, n, d = 8, 8, 2048, 64
    q, k, v, go = (_randn(b, h, n, d, seed=s) for s in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ta.flash_attention(q, k, v, 0.125)
    grads = torch.autograd.grad(out, (q, k, v), go)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    size = q.numel() * q.element_size()
    assert extra <= 8 * size, f"peak extra memory {extra / 2 ** 20:.0f} MiB, q is {size / 2 ** 20:.0f} MiB"
    assert all(torch.isfinite(g).all() for g in grads)


# --- the compiled fit on CUDA ---------------------------------------------------------------------------------
def _fit_problem(layers=2, heads=3, grid=(5, 7), dim=32, rank=8, seed=6):
    from impulse_attn.fitting.iterative import init_qk
    from impulse_attn.fitting.reduced import factor_basis
    from impulse_attn.targets import draw_offsets, impulse_targets, sincos_2d
    g = torch.Generator().manual_seed(seed)
    a, b = factor_basis(sincos_2d(grid, dim))
    n = grid[0] * grid[1]
    t = torch.stack([impulse_targets(draw_offsets(heads, 3, generator=g), grid) for _ in range(layers)])
    q0, k0 = init_qk(layers, heads, dim, rank, g)
    norm0 = q0.norm(dim=-2).mean(dim=(-1, -2))
    assert t.shape == (layers, heads, n, n)
    return [x.cuda().contiguous() for x in (a, b, t, q0, k0, norm0)]


@pytest.fixture
def fit_ext():
    from impulse_attn.fitting import compiled
    ok, why = compiled.available("cuda")
    if not ok:
        pytest.fail(f"the compiled CUDA fit is not available on this GPU machine: {why}")
    return compiled


def test_fit_ops_opcheck_on_cuda(fit_ext):
    """The fake implementations (torch.compile, export) agree with the CUDA kernels' outputs in shape, dtype,
    device and strides; the schema and dispatch are consistent (tests/test_fit_ext.py does the same on the CPU)."""
    a, b, t, q0, k0, norm0 = _fit_problem()
    moments = [torch.zeros_like(q0) for _ in range(4)]
    torch.library.opcheck(torch.ops.impulse_attn.fit_iterative.default,
                          (a, b, t, q0, k0, *moments, norm0, 0, 5, 1e-3, 0.5, 3, 0))
    torch.library.opcheck(torch.ops.impulse_attn.fit_gradients.default, (a, b, t, q0, k0, 0.5))


def test_fit_is_deterministic_on_cuda(fit_ext):
    """The paper's configuration with the planner's shape (on sm_90 a cluster whose partial sums travel through
    distributed shared memory): the cluster reductions run in rank order, so two runs give the same bits."""
    a, b, t, q0, k0, norm0 = _fit_problem(layers=6, heads=8, grid=(16, 16), dim=512, rank=64, seed=0)
    moments = [torch.zeros_like(q0) for _ in range(4)]
    args = (a, b, t, q0, k0, *moments, norm0, 0, 20, 1e-4, 0.1, 100, 0)
    first = [x.cpu() for x in torch.ops.impulse_attn.fit_iterative(*args)]
    second = [x.cpu() for x in torch.ops.impulse_attn.fit_iterative(*args)]
    for i, (u, w) in enumerate(zip(first, second)):
        assert torch.isfinite(u).all(), f"output {i} is not finite"
        assert torch.equal(u, w), f"output {i} differs between two identical runs"
