"""Backend choice on a GPU: what `impulse_attn.backends()` reports once `make gpu-check` has built the extension with
CUDA, the parity probes that guard "auto" passing on real hardware, and "auto" following the policy of
attention/backends.py and fitting/backends.py. Skipped without CUDA (tests/test_backends.py covers the logic on the
CPU with stand-ins); collected everywhere.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

import impulse_attn
from impulse_attn import SimpleViT, fit_impulse
from impulse_attn.attention import attention, backends as attention_backends
from impulse_attn.attention.reference import reference_attention
from impulse_attn.fitting import backends as fit_backends

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py
from benchmarks.gpu_check.compiles import Call, pin_for  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_guard.py
from launch_guard import declared_launches_and_no_pin_left  # noqa: E402,F401  (autouse)

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
# The probes at the (dtype, head dim) pairs test_triton_attention_gpu.py compiles (the probe's shape, N = 37 and
# three heads, has their specialization), each with that file's pinned config: these tests are about the choice
# and the probes, not tuning, and add no compile.
PROBES = [(torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float16, 48), (torch.float32, 80)]
AUTO_SHAPE = (2, 4, 37, 48)   # float16 "auto" input of test_auto_attention_takes_the_kernel_once_the_policy_lists_it


def _probe_call(dtype, head_dim):
    return Call(2, 3, 37, head_dim, dtype, pin_for(dtype, head_dim), backward=False)   # attention_backends._probe


def _pinned(dtype, head_dim):
    from impulse_attn.attention import triton_flash
    return triton_flash.pinned_config(*pin_for(dtype, head_dim))


LAUNCHES = {
    "test_every_gpu_path_is_available": lambda: [],
    "test_attention_parity_probe_passes": lambda dtype, head_dim: [_probe_call(dtype, head_dim)],
    # "auto" on CUDA probes the kernel only once the policy lists it
    "test_auto_attention_follows_the_policy": lambda: (
        [_probe_call(torch.float16, 64)] if "triton" in attention_backends.AUTO_ORDER["cuda"] else []),
    "test_auto_attention_takes_the_kernel_once_the_policy_lists_it": lambda: [
        _probe_call(torch.float16, AUTO_SHAPE[-1]),
        Call(*AUTO_SHAPE, torch.float16, pin_for(torch.float16, AUTO_SHAPE[-1]), backward=False)],
    "test_fit_parity_probe_and_auto_choose_cuda": lambda: [],
    "test_model_init_uses_the_cuda_fit": lambda: [],
}


@pytest.fixture(autouse=True)
def _fresh_choices():
    attention_backends.reset()
    fit_backends.reset()
    yield
    attention_backends.reset()
    fit_backends.reset()


def test_every_gpu_path_is_available():
    """After the CUDA build every fast path must be usable here; "not available" names what is missing."""
    state = impulse_attn.backends()
    missing = {k: v for k, v in state.items() if k in ("attention/triton", "fit/cpp", "fit/cuda") and v != "available"}
    assert not missing, f"fast paths not available on this GPU machine: {missing}"


@pytest.mark.parametrize("dtype,head_dim", PROBES, ids=str)
def test_attention_parity_probe_passes(dtype, head_dim):
    """The probe "auto" runs before it uses the kernel on a (device, dtype, head dim): a failure here would
    silently keep "auto" off the kernel once the policy lists it."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("bfloat16 needs compute capability 8.0 or newer")
    with _pinned(dtype, head_dim):
        why = attention_backends._probe("triton", torch.device("cuda"), dtype, head_dim)
    assert why is None, why


def test_auto_attention_follows_the_policy():
    q = torch.randn(2, 4, 37, 64, device="cuda", dtype=torch.float16)
    # Every backend the policy may list is available here (test above), so "auto" is the first one listed.
    assert attention_backends.resolve("auto", q) == attention_backends.AUTO_ORDER["cuda"][0]


def test_auto_attention_takes_the_kernel_once_the_policy_lists_it(monkeypatch):
    """The switch the GPU acceptance data decides: with "triton" first in AUTO_ORDER["cuda"], "auto" must take it,
    without a fallback warning, and give the reference's result."""
    monkeypatch.setitem(attention_backends.AUTO_ORDER, "cuda", ("triton", "sdpa"))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(*AUTO_SHAPE, generator=g, device="cuda", dtype=torch.float16) for _ in range(3))
    with warnings.catch_warnings(), _pinned(torch.float16, AUTO_SHAPE[-1]):
        warnings.simplefilter("error", RuntimeWarning)
        assert attention_backends.resolve("auto", q) == "triton"
        out = attention(q, k, v, 0.125, "auto")
    exact = reference_attention(q.double(), k.double(), v.double(), 0.125)
    # float16 output of float32 accumulation: within a few fp16 roundings (2^-11 relative) of O, |O| <~ 1.
    assert (out.double() - exact).abs().max().item() <= 4e-3


def test_fit_parity_probe_and_auto_choose_cuda():
    assert fit_backends.unavailable_reason("cuda") is None, "the CUDA fit failed its parity probe on this GPU"
    kw = dict(num_heads=8, grid_size=(16, 16), kernel_size=5, dim=512, head_dim=64, fit_method="iterative", steps=50,
              layers=2, seed=0, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        auto = fit_impulse(**kw, backend="auto")
    assert auto.report.backend == "cuda"
    cpu = fit_impulse(**kw, backend="cpp")
    # Same recipe and init: float32 iterates of the GPU and the CPU twin differ by rounding amplified over 50 Adam
    # steps; 1e-3 of the largest weight is the parity probe's bound (fitting/backends.py), far below what an
    # indexing or math error produces (of the order of the weights).
    err = max((auto.q - cpu.q).abs().max().item(), (auto.k - cpu.k).abs().max().item())
    assert err <= 1e-3 * max(cpu.q.abs().max().item(), cpu.k.abs().max().item())


def test_model_init_uses_the_cuda_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 20-step fit may be reported as near uniform
        model = SimpleViT(image_size=32, patch_size=2, num_classes=10, dim=128, depth=2, num_heads=4, head_dim=32,
                          mlp_dim=128, init="impulse", fit_method="iterative", fit_kwargs=dict(steps=20))
    assert model.fit_results[0].report.backend == "cuda"
