"""Backend choice: "auto" never breaks a run. A kernel that fails its parity probe or raises is replaced by the
next backend with one warning naming the cause; an explicitly requested backend is never replaced."""
from __future__ import annotations

import warnings

import pytest
import torch

import impulse_attn
from impulse_attn import fit_impulse
from impulse_attn.attention import attention, backends as attention_backends
from impulse_attn.attention import triton_flash
from impulse_attn.fitting import backends as fit_backends
from impulse_attn.fitting import compiled as fit_ext

SMALL = dict(num_heads=3, grid_size=(5, 6), kernel_size=3, dim=32, head_dim=8, steps=10, lr=1e-3, scale=0.5,
             seed=1, warn=False)
needs_ext = pytest.mark.skipif(not fit_ext.available("cpu")[0], reason="compiled extension not built")


@pytest.fixture(autouse=True)
def _fresh_choices():
    fit_backends.reset()
    attention_backends.reset()
    yield
    fit_backends.reset()
    attention_backends.reset()


@needs_ext
def test_auto_uses_the_compiled_fit_when_it_passes_its_probe():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit_impulse(**SMALL)
    assert res.report.backend in ("cpp", "cuda")


@needs_ext
def test_a_wrong_compiled_fit_is_caught_by_the_probe(monkeypatch):
    real = fit_ext.fit_iterative

    def wrong(*args, **kwargs):  # planted: right shapes, wrong numbers
        q, k = real(*args, **kwargs)
        return q * 1.01, k
    monkeypatch.setattr(fit_ext, "fit_iterative", wrong)
    with pytest.warns(RuntimeWarning, match="backend 'cpp' is disabled.*parity probe.*differs"):
        res = fit_impulse(**SMALL)
    assert res.report.backend == "reference"
    ref = fit_impulse(**SMALL, backend="reference")
    assert torch.equal(res.q, ref.q)
    assert "parity probe" in fit_backends.unavailable_reason("cpp")


@needs_ext
def test_a_launch_failure_falls_back_with_one_warning(monkeypatch):
    real = fit_ext.fit_iterative
    calls = []

    def fails_after_the_probe(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("fit kernel launch: invalid argument (planted)")
        return real(*args, **kwargs)
    monkeypatch.setattr(fit_ext, "fit_iterative", fails_after_the_probe)
    with pytest.warns(RuntimeWarning, match="backend 'cpp' failed.*planted.*falling back to 'reference'"):
        res = fit_impulse(**SMALL)
    assert res.report.backend == "reference"
    # the failed backend stays out of "auto" for the rest of the process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_impulse(**SMALL).report.backend == "reference"


@needs_ext
def test_an_explicit_backend_is_never_replaced(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")
    monkeypatch.setattr(fit_ext, "fit_iterative", broken)
    with pytest.raises(RuntimeError, match="planted failure"):
        fit_impulse(**SMALL, backend="cpp")


def test_an_unavailable_explicit_backend_says_why():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="backend 'cuda' cannot run here: .*use backend='auto'"):
        fit_impulse(**SMALL, backend="cuda")


def test_backends_reports_every_backend():
    status = impulse_attn.backends()
    assert set(status) == {"attention/reference", "attention/sdpa", "attention/triton", "fit/reference",
                           "fit/cpp", "fit/cuda"}
    assert status["attention/sdpa"] == "available" and status["fit/reference"] == "available"


# --- attention ------------------------------------------------------------------------------------------------
def _qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 37, 16, generator=g) for _ in range(3)]


def test_auto_attention_is_sdpa_until_the_kernel_is_measured_to_win():
    # docs/PERFORMANCE.md: no GPU measurement has shown the Triton kernel ahead of SDPA yet
    assert "triton" not in attention_backends.AUTO_ORDER["cuda"]
    q, k, v = _qkv()
    assert attention_backends.resolve("auto", q) == "sdpa"


def test_a_wrong_attention_kernel_is_caught_by_the_probe(monkeypatch):
    if triton_flash.unavailable_reason(*_qkv()) is not None:
        pytest.skip("the Triton kernel cannot run here")
    monkeypatch.setitem(attention_backends.AUTO_ORDER, "cpu", ("triton", "sdpa"))
    real = triton_flash.flash_attention
    monkeypatch.setattr(triton_flash, "flash_attention", lambda q, k, v, s: real(q, k, v, s).flip(-2))
    q, k, v = _qkv()
    with pytest.warns(RuntimeWarning, match="does not use 'triton'.*parity probe.*differs"):
        out = attention(q, k, v, 0.25, "auto")
    torch.testing.assert_close(out, attention(q, k, v, 0.25, "sdpa"), rtol=0, atol=0)


def test_a_right_attention_kernel_passes_the_probe(monkeypatch):
    if triton_flash.unavailable_reason(*_qkv()) is not None:
        pytest.skip("the Triton kernel cannot run here")
    monkeypatch.setitem(attention_backends.AUTO_ORDER, "cpu", ("triton", "sdpa"))
    q, k, v = _qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attention_backends.resolve("auto", q) == "triton"


def test_the_choice_is_made_once_per_device_and_dtype(monkeypatch):
    calls = []
    monkeypatch.setitem(attention_backends.AUTO_ORDER, "cpu", ("triton", "sdpa"))
    monkeypatch.setattr(attention_backends, "unavailable_reason", lambda *a: calls.append(a[0]) or "planted: no")
    q, k, v = _qkv()
    for _ in range(3):
        attention(q, k, v, 0.25)
    attention(q.double(), k.double(), v.double(), 0.25)
    assert calls == ["triton", "triton"]        # float32 once, float64 once
    # the refused kernel fell through to the next in the order, and that is what is remembered
    assert attention_backends.resolve("auto", q) == "sdpa" and len(calls) == 2
    # the remembered decision is what kept it to one check: forgotten, the next call checks again
    attention_backends.reset()
    attention(q, k, v, 0.25)
    assert calls == ["triton"] * 3


def test_an_explicit_attention_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setattr(attention_backends, "triton_unavailable_reason", lambda q, k, v: "planted: no GPU")
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="attention backend 'triton' cannot run here: planted: no GPU"):
        attention(q, k, v, 0.25, "triton")
