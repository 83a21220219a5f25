"""Pinned Triton configs: a pin that does not fit the device's shared memory is refused before its first launch
(the autotuner skips such configs, a pin gets no such pruning), pins to one kernel, and pins that are always
restored. The shared memory a compiled kernel needs and the device's limit come from Triton on a GPU; here they are
stood in for, and the launches recorded instead of run."""
import os

import torch

if not torch.cuda.is_available():  # before triton defines any kernel (tests/conftest.py does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from impulse_attn.attention import triton_flash as ta  # noqa: E402

H100_OPTIN = 232448   # bytes of shared memory per block a kernel may opt into on an H100 (sm_90)
A100_OPTIN = 166912


@pytest.fixture
def device(monkeypatch):
    """The launch path as on a GPU: every pinned launch is checked, the compiled kernel needs ``need["bytes"]``, the
    device allows ``need["limit"]``; launches are recorded, not run."""
    need = dict(bytes=0, limit=H100_OPTIN, compiled=[], launched=[])
    monkeypatch.setattr(ta, "_INTERPRETER", False)
    monkeypatch.setattr(ta, "_fits", {})
    monkeypatch.setattr(ta, "_can_check", lambda t: True)
    monkeypatch.setattr(ta, "_compiled_shared_memory",
                        lambda kernel, grid, args, kwargs: need["compiled"].append(kernel) or need["bytes"])
    monkeypatch.setattr(ta, "_shared_memory_limit", lambda dev: need["limit"])

    def wrap(fn):
        return {None: lambda *args, **kwargs: need["launched"].append((fn, kwargs))}
    monkeypatch.setattr(ta, "wrap_triton", wrap)
    monkeypatch.delenv(ta.CONFIG_ENV, raising=False)
    return need


def _launch(name="dkdv", dtype=torch.float32, head_dim=128):
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=128, BASE2=True, PRECISION="ieee", ACC=None)
    ta._launch(name, None, (torch.zeros(1, dtype=dtype),), meta)


def test_a_pinned_config_that_does_not_fit_is_refused_before_it_launches(device):
    device.update(bytes=200_000, limit=A100_OPTIN)   # float32 dK/dV, 64×64 tiles at d = 128, on an A100
    with ta.pinned_config(64, 64, 4, 2):
        with pytest.raises(RuntimeError, match="shared memory") as info:
            _launch()
    text = str(info.value)
    for needle in ("200000", str(A100_OPTIN), "dkdv", "torch.float32", "head dim 128", "BLOCK_M"):
        assert needle in text, (needle, text)
    assert device["compiled"] == [ta._KERNELS["dkdv"]] and not device["launched"]


def test_a_pinned_config_that_fits_launches_and_is_checked_once(device):
    device.update(bytes=120_000)
    with ta.pinned_config(32, 32, 4, 2):
        _launch()
        _launch()
        _launch(head_dim=80)   # another head dim is another kernel: checked again
    assert len(device["launched"]) == 3 and len(device["compiled"]) == 2
    assert all(fn is ta._KERNELS["dkdv"] and kw["BLOCK_M"] == 32 for fn, kw in device["launched"])


def test_autotuned_launches_are_left_to_the_autotuner(device):
    device.update(bytes=10 ** 9)   # the autotuner prunes configs that do not fit: nothing to check here
    with ta.autotuning():
        _launch()
    assert device["launched"][0][0] is ta._TUNED["dkdv", "float32"] and not device["compiled"]


def test_no_check_without_a_compiled_kernel_on_a_real_cuda_tensor():
    # The interpreter, CPU or meta tensors (the GPU check's compile planning), fake tensors (tracing): no check.
    assert not ta._can_check(torch.zeros(1))
    assert not ta._can_check(torch.empty(1, device="meta"))


def test_a_pin_for_one_kernel_leaves_the_others_to_the_autotuner(device):
    with ta.pinned_config(32, 64, 4, 2, kernel="dkdv"):
        assert ta._kernel_config("dkdv")["BLOCK_M"] == 32
        assert ta._kernel_config("fwd") is None and ta._kernel_config("dq") is None
        assert ta._kernel_config("delta") is None   # the backward's preprocess keeps its default block
        _launch("fwd")
        _launch("dkdv")
    assert [fn for fn, _ in device["launched"]] == [ta._TUNED["fwd", "float32"], ta._KERNELS["dkdv"]]
    with pytest.raises(ValueError, match="kernel"):
        with ta.pinned_config(kernel="delta"):
            pass


def test_pins_are_restored_whatever_happens_inside():
    before = (ta._pinned, ta._pinned_kernel)
    with pytest.raises(KeyError):
        with ta.pinned_config(64, 32, 4, 2, kernel="fwd"):
            with ta.autotuning():
                assert ta._pinned is ta._AUTOTUNE and ta._pinned_kernel is None
                raise KeyError("inside")
    assert (ta._pinned, ta._pinned_kernel) == before
    with ta.pinned_config(64, 32, 4, 2):
        with ta.autotuning():
            pass
        assert ta.active_config()["BLOCK_N"] == 32
    assert (ta._pinned, ta._pinned_kernel) == before
