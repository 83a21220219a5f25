"""The CUDA kernel's logic, run on the CPU: csrc/fit_cuda_kernel.cuh compiled with g++ against a thread-level
emulation of CUDA (tests/cuda_emu/emulate.cpp: a std::thread per CUDA thread, barriers, shuffles, distributed
shared memory) and compared with the CPU twin (the compiled CPU op) and with float64.

This is what runs of the GPU kernel here: the cluster split of D and N (uneven, and a block with no rows at
all), the cluster reductions, the warp-per-row softmax pass, renormalization in every mode, state in shared or
global memory, gradient mode, the final loss. Tolerance as in test_fit_ext.py: the emulated kernel's float32 error
against float64 is at most 4 times the CPU twin's, plus 1e-6 of the largest weight.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from impulse_attn.kernels import fit_ext

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")
_OK, _WHY = fit_ext.available("cpu")
pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"),
              pytest.mark.skipif(not _OK, reason=f"compiled extension not available: {_WHY}")]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_emu") / "libfitemu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-I", str(ROOT / "csrc"),
           str(ROOT / "tests" / "cuda_emu" / "emulate.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"emulation build failed:\n{res.stderr}"
    lib = ctypes.CDLL(str(out))
    lib.emu_fit.restype = ctypes.c_int
    return lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)


def _emu_run(lib, a, b, targets, state, norm0, *, scale, step0, steps, renorm_every, renorm_mode, lr, cl,
             state_in_smem, grads=False, loss_heads=0):
    layers, heads, n, _ = targets.shape
    d, r = state[0].shape[-2:]
    k = a.shape[1]
    state = [s.clone() for s in state]
    loss = torch.zeros(layers, heads)
    gq = torch.zeros_like(state[0]) if grads else None
    gk = torch.zeros_like(state[0]) if grads else None
    at = a.T.contiguous()  # held: ctypes keeps only the address
    lib.emu_fit(layers, heads, loss_heads or heads, n, d, r, k, _ptr(a), _ptr(at), _ptr(b),
                _ptr(targets), _ptr(norm0), *[_ptr(s) for s in state], _ptr(loss), _ptr(gq), _ptr(gk),
                ctypes.c_float(scale), ctypes.c_longlong(step0), ctypes.c_longlong(steps), renorm_every,
                renorm_mode, ctypes.c_double(lr), cl, int(state_in_smem))
    return state, loss, gq, gk


def _problem(layers, heads, n, d, r, k, seed):
    g = torch.Generator().manual_seed(seed)
    # A random full-rank pseudo-input in factored form: k may exceed a warp (32) and need not be small.
    a = torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0].T.float().contiguous()
    idx = torch.randint(0, n, (layers, heads, n), generator=g)
    targets = torch.nn.functional.one_hot(idx, n).float()
    targets[..., :2, :] = 0  # zero rows, as shifts that leave the grid give
    q = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    kk = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    state = (q, kk, *[torch.zeros_like(q) for _ in range(4)])
    norm0 = q.norm(dim=-2).mean(dim=(-1, -2))
    return a, b, targets.contiguous(), state, norm0


# (layers, heads, n, d, r, k, cl, state_in_smem, renorm_mode): uneven splits of D and N over the cluster,
# r and k above one warp, a block that owns no rows of D (d=9 over 4 blocks), state in global memory.
CONFIGS = [
    (2, 3, 20, 24, 8, 5, 1, True, 0),
    (1, 2, 42, 37, 40, 34, 2, True, 1),
    (1, 2, 10, 9, 3, 3, 4, False, 0),
    (2, 1, 13, 16, 6, 7, 2, False, 2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"n{c[2]}-d{c[3]}-r{c[4]}-k{c[5]}-cl{c[6]}")
def test_emulated_cuda_kernel_matches_cpu_twin(emu, cfg):
    layers, heads, n, d, r, k, cl, smem, mode = cfg
    a, b, t, state, norm0 = _problem(layers, heads, n, d, r, k, seed=sum(cfg[:6]))
    kw = dict(lr=1e-2, scale=0.7, renorm_every=3, renorm=fit_ext.RENORM_MODES[mode])
    steps = 7
    cpu, cpu_loss = fit_ext.run_steps(a, b, t, state, norm0, 2, steps, **kw)
    f64, f64_loss = fit_ext.run_steps(a.double(), b.double(), t.double(), [s.double() for s in state],
                                      norm0.double(), 2, steps, **kw)
    gpu, gpu_loss, _, _ = _emu_run(emu, a, b, t, state, norm0, scale=0.7, step0=2, steps=steps, renorm_every=3,
                                   renorm_mode=mode, lr=1e-2, cl=cl, state_in_smem=smem)
    assert (gpu[0] - state[0]).abs().max() > 1e-3  # the run moved the weights
    for ours, twin, exact in zip(gpu, cpu, f64):
        err = (ours.double() - exact).abs().max().item()
        err_twin = (twin.double() - exact).abs().max().item()
        assert err <= 4 * err_twin + 1e-6 * exact.abs().max().item(), (err, err_twin)
    torch.testing.assert_close(gpu_loss.double(), f64_loss, rtol=1e-5, atol=1e-9)


def test_emulated_cuda_gradient_mode_matches_cpu_twin(emu):
    a, b, t, state, norm0 = _problem(2, 2, 30, 21, 12, 9, seed=11)
    dq, dk, loss = torch.ops.impulse_attn.fit_gradients(a.double(), b.double(), t.double(), state[0].double(),
                                                        state[1].double(), 0.6, 0)
    out, gloss, gq, gk = _emu_run(emu, a, b, t, state, norm0, scale=0.6, step0=0, steps=1, renorm_every=1,
                                  renorm_mode=0, lr=1e-2, cl=2, state_in_smem=True, grads=True)
    torch.testing.assert_close(gq.double(), dq, rtol=1e-4, atol=1e-6 * dq.abs().max().item())
    torch.testing.assert_close(gk.double(), dk, rtol=1e-4, atol=1e-6 * dk.abs().max().item())
    torch.testing.assert_close(gloss.double(), loss, rtol=1e-5, atol=1e-9)
    assert torch.equal(out[0], state[0]) and torch.equal(out[1], state[1])  # gradient mode updates nothing
