"""The compiled Triton attention kernel on a GPU at ViT sizes, in float16, bfloat16 and float32; skipped without CUDA.

Tolerance: every element of O, dQ, dK, dV within the bound of the rounding-error model in tests/error_model.py
(γ_m = m·eps per dot of length m, float32 accumulation, operands the kernel forms rounded to the input dtype at
float16/bfloat16, the final rounding to the dtype), against float64 truth from the same rounded inputs. The bound
depends only on the inputs, not on how accurate cuBLAS happens to be. And each output as a whole within 1.5× the
error of the kernel's own roundings (``error_model.norm_bounds``), a bound below 1% at 16-bit dtypes: a test
scales one output by 1.01 and must see it fail. The float64 truth is computed on the GPU. float32 runs with
input_precision="ieee" (TF32 off), so the fp32 checks stay meaningful. Kernels run with one pinned config (the
autotuner would compile
every config for every shape); one test autotunes, and one checks every config of the tuning space.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/error_model.py
from error_model import assert_norm_within, assert_within, attention_bounds, norm_bounds  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: the compiled Triton kernels are tested in tests/test_triton_attention.py through the "
                "interpreter only", allow_module_level=True)

from impulse_attn.attention import triton_flash as ta  # noqa: E402  (an import error fails, never skips)
if ta._INTERPRETER:
    pytest.skip("TRITON_INTERPRET=1 is set: this module tests the compiled kernels", allow_module_level=True)

# bfloat16 first: what training runs, so a stage cut short has checked it.
DTYPES = ([torch.bfloat16] if torch.cuda.get_device_capability()[0] >= 8 else []) + [torch.float16, torch.float32]
NAMES = ("out", "dq", "dk", "dv")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(ta, "_poison_outputs", True)
    monkeypatch.delenv(ta.CONFIG_ENV, raising=False)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with ta.pinned_config(64, 64, num_warps=4, num_stages=2):
        yield
    torch.backends.cuda.matmul.allow_tf32 = tf32


def explicit(q, k, v, scale):
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def out_and_grads(fn, q, k, v, scale, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, scale)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def check(b, h, n, d, scale, dtype, seed=0, mutate=None):
    """The kernel against float64 truth on the GPU; ``mutate`` = (output index, factor) scales that output first."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, go = (torch.randn(b, h, n, d, generator=g, device="cuda", dtype=torch.float64) for _ in range(4))
    low = [t.to(dtype) for t in (q, k, v, go)]
    rounded = [t.double() for t in low]
    truth = out_and_grads(explicit, *rounded[:3], scale, rounded[3])
    got = list(out_and_grads(ta.flash_attention, *low[:3], scale, low[3]))
    if mutate is not None:
        got[mutate[0]] = got[mutate[0]] * mutate[1]
    bounds = attention_bounds(*rounded[:3], scale, rounded[3], dtype)
    norms = norm_bounds(*rounded[:3], scale, rounded[3], dtype, truth)
    for name, gt, t, bound, norm in zip(NAMES, got, truth, bounds, norms):
        assert gt.dtype == dtype and torch.isfinite(gt).all(), f"{name}: unwritten (NaN) or non-finite elements"
        assert_norm_within(name, gt, t, norm)
        assert_within(name, gt, t, bound)


def test_autotuned_kernels_are_correct(monkeypatch):
    monkeypatch.setattr(ta, "_pinned", None)  # let the autotuner choose, at the paper's shapes
    for dtype in DTYPES:
        for n in (197, 256):
            check(4, 8, n, 64, 0.125, dtype, seed=n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [64, 65, 196, 197, 256, 257])
@pytest.mark.parametrize("d", [32, 64])
def test_vit_shapes(n, d, dtype):
    check(8, 8, n, d, d ** -0.5, dtype, seed=n + d)
    check(2, 3, n, d, 0.1, dtype, seed=n * d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 16, 48, 80, 128])
def test_other_head_dims(d, dtype):
    check(4, 4, 197, d, 0.1, dtype, seed=d)


@pytest.mark.parametrize("n", [1, 7, 1023])
def test_short_and_long_sequences(n):
    check(2, 2, n, 64, 0.125, torch.float16, seed=n)


@pytest.mark.parametrize("which", range(4), ids=NAMES)
@pytest.mark.parametrize("dtype", DTYPES[:-1], ids=str)   # the 16-bit ones
def test_a_one_percent_error_fails(dtype, which):
    check(4, 8, 197, 64, 0.125, dtype, seed=3)                     # the kernel passes ...
    with pytest.raises(AssertionError, match=NAMES[which]):       # ... and 1% off does not
        check(4, 8, 197, 64, 0.125, dtype, seed=3, mutate=(which, 1.01))


def _all_configs():
    seen = {}
    for c in (c for space in ta.TUNING_SPACE.values() for configs in space.values() for c in configs):
        key = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
        seen[key] = key
    return list(seen)


@pytest.mark.parametrize("cfg", _all_configs(), ids=lambda c: "m{}n{}w{}s{}".format(*c))
def test_every_config_in_the_tuning_space_is_correct(cfg):
    # The autotuner may pick any of them: each must compile and be right, with a tail block in both directions.
    with ta.pinned_config(*cfg):
        check(2, 4, 197, 64, 0.1, torch.float16, seed=1)
        check(2, 4, 197, 64, 0.1, torch.bfloat16 if torch.bfloat16 in DTYPES else torch.float16, seed=2)


def test_many_heads_one_dimensional_grid():
    # B·H beyond 65535 (the CUDA limit of a grid's second dimension).
    check(70000, 1, 16, 16, 0.25, torch.float16)


def test_opcheck_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, go = (torch.randn(2, 2, 37, 64, generator=g, device="cuda", dtype=torch.float16) for _ in range(4))
    torch.library.opcheck(torch.ops.impulse_attn.flash_attention_fwd.default,
                          (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 0.1))
    out, lse = torch.ops.impulse_attn.flash_attention_fwd(q.detach(), k.detach(), v.detach(), 0.1)
    torch.library.opcheck(torch.ops.impulse_attn.flash_attention_bwd.default,
                          (go, q.detach(), k.detach(), v.detach(), out, lse, 0.1))


def test_torch_compile_inductor_matches_eager():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, go = (torch.randn(4, 8, 197, 64, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    with ta.pinned_config(64, 64, num_warps=4, num_stages=2):  # one config for both, not two autotuning runs
        eager = out_and_grads(ta.flash_attention, q, k, v, 0.1, go)
        compiled = out_and_grads(torch.compile(ta.flash_attention, fullgraph=True), q, k, v, 0.1, go)
    for name, a, e in zip(NAMES, compiled, eager):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, e, msg=name)  # bfloat16 defaults: a launch dropped by tracing fails


def test_cuda_refuses_float64_with_a_reason():
    q = torch.randn(1, 1, 8, 16, device="cuda", dtype=torch.float64)
    assert "float64" in ta.unavailable_reason(q, q, q)
    with pytest.raises(RuntimeError, match="float64"):
        ta.flash_attention(q, q, q, 0.1)
