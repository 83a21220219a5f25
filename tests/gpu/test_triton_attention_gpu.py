"""The compiled Triton attention kernel on a GPU at ViT sizes; skipped without CUDA, collected everywhere (so the dry
run of `make gpu-check` counts what it compiles).

Tolerance: every element of O, dQ, dK, dV within the bound of the rounding-error model in tests/error_model.py
(γ_m = m·eps per dot of length m, float32 accumulation, operands the kernel forms rounded to the input dtype at
float16/bfloat16, the final rounding to the dtype), against float64 truth from the same rounded inputs. The bound
depends only on the inputs, not on how accurate cuBLAS happens to be. And each output as a whole within FACTOR
(1.25) × the error of the kernel's own roundings (``error_model.norm_bounds``), a bound below 1% at 16-bit dtypes:
a test scales one output by 1.01 and must see it fail. The float64 truth is computed on the GPU. float32 runs with
input_precision="ieee" (TF32 off), so the fp32 checks stay meaningful.

What runs is sized to the attention-parity stage's budget (benchmarks/gpu_check/stages.py), where each distinct
kernel key costs a compile of 1-2 s: bfloat16 first (what training runs) and bfloat16 covers the shapes. The
kernels are autotuned once, at the paper's shape (B·H heads of N = 256 = 16×16 tokens, d = 64), and every config of
each kernel's space then runs on the keys the autotuner compiled; every other test pins one config per
(dtype, head dim) (``compiles.pin_for``: float32 at d > 64 gets tiles whose shared memory fits, and the kernel
checks that against the device's limit before its first launch). Head dims: bfloat16 64 and 128 (the block is the
head dim), float16 48 and float32 80 (padded blocks; float16 and float32 once each). N = 197 and 256 differ in
specialization (divisible by 16 or not), so both classes run; N = 1 and one head, which Triton specializes
(argument == 1), are left to tests/test_triton_attention.py (interpreter). Each test declares what it launches
(LAUNCHES; compiles.py counts them, tests/gpu/launch_guard.py checks them on the GPU) and runs exactly those calls.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/error_model.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py
from error_model import assert_norm_within, assert_within, attention_bounds, norm_bounds  # noqa: E402

from benchmarks.gpu_check.compiles import Call, pin_for  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_guard.py
from launch_guard import declared_launches_and_no_pin_left  # noqa: E402,F401  (autouse)
from impulse_attn.attention import triton_flash as ta  # noqa: E402  (an import error fails, never skips)

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA GPU: the compiled Triton kernels are tested in "
                                                 "tests/test_triton_attention.py through the interpreter only")
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
NAMES = ("out", "dq", "dk", "dv")
PAPER = (4, 8, 256, 64)   # (B, H, N, d): SimpleViT's 16×16 tokens of 64 dims


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    if ta._INTERPRETER:
        pytest.skip("TRITON_INTERPRET=1 is set: this module tests the compiled kernels")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("bfloat16 needs compute capability 8.0 or newer")
    monkeypatch.setattr(ta, "_poison_outputs", True)
    monkeypatch.delenv(ta.CONFIG_ENV, raising=False)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def explicit(q, k, v, scale):
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def out_and_grads(fn, q, k, v, scale, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, scale)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def configured(call: Call):
    """The call's config: pinned (to every kernel, or to call.kernel alone), or the autotuner's."""
    if call.config is None:
        return ta.autotuning()
    return ta.pinned_config(*call.config, kernel=call.kernel)


def check(call: Call, mutate=None):
    """The kernel against float64 truth on the GPU; ``mutate`` = (output index, factor) scales that output first."""
    b, h, n, d, dtype = call.b, call.h, call.n, call.d, call.dtype
    g = torch.Generator(device="cuda").manual_seed(call.seed)
    q, k, v, go = (torch.randn(b, h, n, d, generator=g, device="cuda", dtype=torch.float64) for _ in range(4))
    low = [t.to(dtype) for t in (q, k, v, go)]
    rounded = [t.double() for t in low]
    truth = out_and_grads(explicit, *rounded[:3], call.scale, rounded[3])
    with configured(call):
        got = list(out_and_grads(ta.flash_attention, *low[:3], call.scale, low[3]))
    if mutate is not None:
        got[mutate[0]] = got[mutate[0]] * mutate[1]
    bounds = attention_bounds(*rounded[:3], call.scale, rounded[3], dtype)
    norms = norm_bounds(*rounded[:3], call.scale, rounded[3], dtype, truth)
    for name, gt, t, bound, norm in zip(NAMES, got, truth, bounds, norms):
        assert gt.dtype == dtype and torch.isfinite(gt).all(), f"{name}: unwritten (NaN) or non-finite elements"
        assert_norm_within(name, gt, t, norm)
        assert_within(name, gt, t, bound)


# --- what each test runs (and so compiles) ------------------------------------------------------------------

def autotuned():
    return [Call(*PAPER, BF16, config=None, seed=256)]


def every_config(kernel, cfg):
    # at the paper's shape, where the autotuned test compiled every config of each kernel: no new compile
    return [Call(*PAPER, BF16, config=cfg, kernel=kernel, seed=7)]


def vit_shapes(n):
    return [Call(8, 8, n, 64, BF16, pin_for(BF16, 64), scale=0.125, seed=n),
            Call(2, 3, n, 64, BF16, pin_for(BF16, 64), scale=0.1, seed=n + 1)]


def other_head_dims(dtype, d):
    return [Call(4, 4, 197, d, dtype, pin_for(dtype, d), scale=0.1, seed=d)]


def one_percent(dtype, d):
    return [Call(4, 8, 197, d, dtype, pin_for(dtype, d), scale=0.125, seed=3)]


def many_heads():
    # B·H = 70000 programs along one grid dimension (CUDA allows 65535 in the second); two heads, N = 16 and
    # d = 64: the specialization of the paper's shape (H ≠ 1, N divisible by 16), so no new compile
    return [Call(35000, 2, 16, 64, BF16, pin_for(BF16, 64), scale=0.25)]


def long_sequence():
    return [Call(2, 2, 1023, 64, BF16, pin_for(BF16, 64), seed=1023)]


def _kernel_configs():
    out = []
    for kernel, configs in ta.TUNING_SPACE["16-bit"].items():
        for c in configs:
            out.append((kernel, (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)))
    return out


LAUNCHES = {
    "test_autotuned_kernels_are_correct": autotuned,
    "test_every_config_in_the_tuning_space_is_correct": every_config,
    "test_vit_shapes": vit_shapes,
    "test_other_head_dims": other_head_dims,
    "test_a_one_percent_error_fails": lambda dtype, d, which: one_percent(dtype, d),
    "test_many_heads_one_dimensional_grid": many_heads,
    "test_long_sequence": long_sequence,
    "test_opcheck_on_cuda": lambda: [Call(2, 2, 37, 64, BF16, pin_for(BF16, 64))],
    "test_cuda_refuses_float64_with_a_reason": lambda: [],
}


# --- the tests ----------------------------------------------------------------------------------------------

def test_autotuned_kernels_are_correct():
    for call in autotuned():
        check(call)


@pytest.mark.parametrize("kernel,cfg", _kernel_configs(), ids=lambda x: x if isinstance(x, str) else
                         "m{}n{}w{}s{}".format(*x))
def test_every_config_in_the_tuning_space_is_correct(kernel, cfg):
    # The autotuner may pick any of them: each must compile and be right (float16 shares the bfloat16 code path;
    # the float32 space's configs are a subset of these, its own compile runs pinned below).
    for call in every_config(kernel, cfg):
        check(call)


@pytest.mark.parametrize("n", [64, 65, 196, 197, 256, 257])
def test_vit_shapes(n):
    for call in vit_shapes(n):
        check(call)


@pytest.mark.parametrize("dtype,d", [(BF16, 128), (F16, 48), (F32, 80)], ids=str)
def test_other_head_dims(dtype, d):
    for call in other_head_dims(dtype, d):
        check(call)


@pytest.mark.parametrize("which", range(4), ids=NAMES)
@pytest.mark.parametrize("dtype,d", [(BF16, 64), (F16, 48)], ids=str)   # the 16-bit ones
def test_a_one_percent_error_fails(dtype, d, which):
    for call in one_percent(dtype, d):
        check(call)                                                # the kernel passes ...
        with pytest.raises(AssertionError, match=NAMES[which]):   # ... and 1% off does not
            check(call, mutate=(which, 1.01))


def test_many_heads_one_dimensional_grid():
    for call in many_heads():
        check(call)


def test_long_sequence():
    for call in long_sequence():
        check(call)


def test_opcheck_on_cuda():
    (call,) = LAUNCHES["test_opcheck_on_cuda"]()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, go = (torch.randn(call.b, call.h, call.n, call.d, generator=g, device="cuda", dtype=call.dtype)
                   for _ in range(4))
    with configured(call):
        torch.library.opcheck(torch.ops.impulse_attn.flash_attention_fwd.default,
                              (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 0.1))
        out, lse = torch.ops.impulse_attn.flash_attention_fwd(q.detach(), k.detach(), v.detach(), 0.1)
        torch.library.opcheck(torch.ops.impulse_attn.flash_attention_bwd.default,
                              (go, q.detach(), k.detach(), v.detach(), out, lse, 0.1))


def test_cuda_refuses_float64_with_a_reason():
    q = torch.randn(1, 1, 8, 16, device="cuda", dtype=torch.float64)
    assert "float64" in ta.unavailable_reason(q, q, q)
    with pytest.raises(RuntimeError, match="float64"):
        ta.flash_attention(q, q, q, 0.1)
