"""The CUDA kernel's logic, run on the CPU: csrc/fit_cuda_kernel.cuh compiled with g++ against a thread-level
emulation of CUDA (tests/cuda_emu/emulate.cpp: a std::thread per CUDA thread, barriers, shuffles, distributed
shared memory) and compared with the CPU twin (the compiled CPU op) and with float64.

The emulation plans each launch with the real planner (csrc/fit_plan.cpp) and gives every block exactly the
planned dynamic shared memory, filled with NaN (so a read of shared memory the kernel never wrote poisons the
result, as garbage would on a GPU) and guarded on both sides (a write outside the plan fails the run). Covered:
every launch shape, each forced in turn (clusters of 8 and 4, state and B in shared or global memory, map rows
whole or in tiles of 8 rows, i.e. several tiles per block), uneven splits of D and N over a cluster and a block
with no rows at all, renormalization in every mode, gradient mode, heads split over several launches, and the
paper's layout (N=256 tokens, D=512, r=64, the sin-cos encoding's real basis) with the shape the planner picks
for each GPU of the table in docs/kernels/fit_cuda.md.

Error model (float32 against float64 truth, the CPU op run in float64 on the same inputs). The emulated kernel
and the CPU twin evaluate the same algebra in float32 with the same per-element functions (fit_math.h); they
differ only in how the sums are ordered and blocked (the twin: vectorized, blocked products; the kernel: one
sequential sum per thread, cluster partials added in rank order). For a sum of m terms any order has error at
most γ_m·Σ|terms| (γ_m ≈ m·eps32) and in practice a random-walk error of order √m·eps32·Σ|terms|, so two
orders' errors differ by a factor of order one, in either direction; Adam then turns gradient rounding into
weight drift in both alike. Hence: the kernel's max error on every output must be at most 4 times the twin's,
plus 1e-6 of the largest weight (about 8 float32 ulps of it) for the case where the twin lands unusually close to
the truth by chance. Measured ratios (kernel error / twin error): 0.4 to 1.2 at the paper's size; 0.2 to 5.5 on
the small problems, where every ratio above 4 had both errors below 2 ulps of the largest weight (the floor's
case). The loss (one number per head, a sum of N² squares) must match float64 to 1e-5 relative.

Launch shapes with the same cluster size must agree bit for bit: where the state and B live changes no
arithmetic, and tiles are multiples of the warp count (fit_cuda_kernel.cuh's tile loop).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from impulse_attn.fitting.iterative import init_qk
from impulse_attn.fitting import compiled as fit_ext
from impulse_attn.fitting import reduced
from impulse_attn.targets import draw_offsets, impulse_targets, sincos_2d

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")
_OK, _WHY = fit_ext.available("cpu")
pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"),
              pytest.mark.skipif(not _OK, reason=f"compiled extension not available: {_WHY}")]

# Device limits: (opt-in shared memory per block in bytes, compute capability). The kernel's static shared
# memory (its Adam coefficients) is 32 bytes in the sm_80 and sm_90 builds.
GPUS = {
    "V100": (98304, (7, 0)),
    "T4": (65536, (7, 5)),
    "A100": (166912, (8, 0)),
    "L4": (101376, (8, 9)),
    "H100": (232448, (9, 0)),
}
STATIC_SMEM = 32
# A device on which every shape fits: for forcing each shape in turn on any problem.
ANY_DEVICE = (1 << 30, (9, 0))
NUM_SHAPES = 9
CLUSTER = {0: 8, 1: 4, 2: 8, 3: 8, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}


class EmuCall(ctypes.Structure):
    """Mirror of EmuCall in tests/cuda_emu/emulate.cpp."""
    _fields_ = ([(n, ctypes.c_int) for n in ("layers", "heads", "loss_heads", "n", "d", "r", "basis")]
                + [(n, ctypes.c_void_p) for n in ("a", "at", "b", "targets", "norm0", "q", "kk", "mq", "vq", "mk",
                                                  "vk", "loss", "grad_q", "grad_k")]
                + [("scale", ctypes.c_float), ("step0", ctypes.c_longlong), ("steps", ctypes.c_longlong),
                   ("renorm_every", ctypes.c_int), ("renorm_mode", ctypes.c_int), ("lr", ctypes.c_double),
                   ("shape", ctypes.c_int), ("max_tile_rows", ctypes.c_int), ("smem_optin", ctypes.c_longlong),
                   ("static_smem", ctypes.c_longlong), ("cc_major", ctypes.c_int), ("cc_minor", ctypes.c_int),
                   ("code_version", ctypes.c_int), ("max_grid_y", ctypes.c_longlong),
                   ("cluster_launch", ctypes.c_int)])


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_emu") / "libfitemu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-I", str(ROOT / "csrc"),
           str(ROOT / "tests" / "cuda_emu" / "emulate.cpp"), str(ROOT / "csrc" / "fit_plan.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"emulation build failed:\n{res.stderr}"
    lib = ctypes.CDLL(str(out))
    lib.emu_fit.restype = ctypes.c_int
    lib.emu_fit.argtypes = [ctypes.POINTER(EmuCall), ctypes.c_char_p, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_int)]
    return lib


def _ptr(t):
    return t.data_ptr() if t is not None else None


def _emu_run(lib, a, b, targets, state, norm0, *, scale, step0, steps, renorm_every, renorm_mode, lr, shape=-1,
             device=ANY_DEVICE, max_tile_rows=8, max_grid_y=65535, grads=False, loss_heads=0, expect_ok=True):
    """Runs the emulated kernel; returns (state, loss, grad_q, grad_k, info) with info the shape that ran, its
    dynamic shared bytes and tile rows (or the refusal)."""
    layers, heads, n, _ = targets.shape
    d, r = state[0].shape[-2:]
    basis = a.shape[1]
    state = [s.clone() for s in state]
    loss = torch.full((layers, heads), float("nan"))
    gq = torch.full_like(state[0], float("nan")) if grads else None
    gk = torch.full_like(state[0], float("nan")) if grads else None
    at = a.T.contiguous()  # held: the struct keeps only the address
    optin, (major, minor) = device
    call = EmuCall(layers, heads, loss_heads or heads, n, d, r, basis,
                   *[_ptr(t) for t in (a, at, b, targets, norm0, *state, loss, gq, gk)],
                   scale, step0, steps, renorm_every, renorm_mode, lr,
                   shape, max_tile_rows, optin, STATIC_SMEM, major, minor, 10 * major + minor, max_grid_y,
                   int(major >= 9))
    err = ctypes.create_string_buffer(2048)
    nbytes, tile = ctypes.c_longlong(0), ctypes.c_int(0)
    ran = lib.emu_fit(ctypes.byref(call), err, len(err), ctypes.byref(nbytes), ctypes.byref(tile))
    info = dict(shape=ran, dynamic_bytes=nbytes.value, tile_rows=tile.value, error=err.value.decode())
    if expect_ok:
        assert ran >= 0, info["error"]
    return state, loss, gq, gk, info


def _problem(layers, heads, n, d, r, basis, seed):
    g = torch.Generator().manual_seed(seed)
    # A random full-rank pseudo-input in factored form: basis may exceed a warp (32) and need not be small.
    a = torch.randn(n, basis, generator=g) / basis ** 0.5
    b = torch.linalg.qr(torch.randn(d, basis, generator=g, dtype=torch.float64))[0].T.float().contiguous()
    idx = torch.randint(0, n, (layers, heads, n), generator=g)
    targets = torch.nn.functional.one_hot(idx, n).float()
    targets[..., :2, :] = 0  # zero rows, as shifts that leave the grid give
    q = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    kk = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    state = (q, kk, *[torch.zeros_like(q) for _ in range(4)])
    norm0 = q.norm(dim=-2).mean(dim=(-1, -2))
    return a, b, targets.contiguous(), state, norm0


def _twin_and_truth(a, b, t, state, norm0, step0, steps, loss_heads=0, **kw):
    cpu, cpu_loss = fit_ext.run_steps(a, b, t, state, norm0, step0, steps, loss_heads=loss_heads, **kw)
    f64, f64_loss = fit_ext.run_steps(a.double(), b.double(), t.double(), [s.double() for s in state],
                                      norm0.double(), step0, steps, loss_heads=loss_heads, **kw)
    return cpu, f64, f64_loss


def _check_error_model(ours, twin, exact, ours_loss, exact_loss, label):
    for i, (o, tw, ex) in enumerate(zip(ours, twin, exact)):
        assert torch.isfinite(o).all(), f"{label}: output {i} has non-finite values"
        err = (o.double() - ex).abs().max().item()
        err_twin = (tw.double() - ex).abs().max().item()
        bound = 4 * err_twin + 1e-6 * ex.abs().max().item()
        assert err <= bound, f"{label}: output {i}: error {err:.3e} > {bound:.3e} (twin's {err_twin:.3e})"
    torch.testing.assert_close(ours_loss.double(), exact_loss, rtol=1e-5, atol=1e-9, msg=label)


def _check_same_bits_per_cluster(runs):
    """runs: {shape: (state, loss)}; shapes with the same cluster size must agree bit for bit."""
    first = {}
    for shape, (state, loss) in runs.items():
        cl = CLUSTER[shape]
        if cl not in first:
            first[cl] = (shape, state, loss)
            continue
        ref_shape, ref_state, ref_loss = first[cl]
        for i, (u, v) in enumerate(zip(state, ref_state)):
            assert torch.equal(u, v), f"shape {shape} differs from shape {ref_shape} (cluster {cl}) in output {i}"
        assert torch.equal(loss, ref_loss), f"shape {shape}'s loss differs from shape {ref_shape}'s"


# (layers, heads, n, d, r, basis, renorm_mode): two layers (per-layer norm0), two heads of a layer, uneven splits
# of D and N over a cluster of 8 and of 4, r and the basis above one warp, blocks that own no rows of D (d=9 over
# 8 or 4 blocks), several tiles of 8 map rows per block (n=100: 13 rows per block of a cluster of 8, 100 rows on
# one block), every renormalization mode. (Few heads and steps: a cluster of 8 is 2048 OS threads here.)
CONFIGS = [
    (2, 1, 20, 24, 8, 5, 0),
    (1, 2, 42, 37, 40, 34, 1),
    (1, 1, 10, 9, 3, 3, 0),
    (1, 1, 13, 16, 6, 7, 2),
    (1, 1, 100, 40, 8, 12, 1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"n{c[2]}-d{c[3]}-r{c[4]}-basis{c[5]}")
def test_every_launch_shape_matches_cpu_twin(emu, cfg):
    layers, heads, n, d, r, basis, mode = cfg
    a, b, t, state, norm0 = _problem(layers, heads, n, d, r, basis, seed=sum(cfg[:6]))
    kw = dict(lr=1e-2, scale=0.7, renorm_every=3, renorm=fit_ext.RENORM_MODES[mode])
    steps = 5  # steps 2 to 6: renormalizations at 3 and 6
    cpu, f64, f64_loss = _twin_and_truth(a, b, t, state, norm0, 2, steps, **kw)
    runs = {}
    for shape in range(NUM_SHAPES):
        out, loss, _, _, info = _emu_run(emu, a, b, t, state, norm0, scale=0.7, step0=2, steps=steps,
                                         renorm_every=3, renorm_mode=mode, lr=1e-2, shape=shape)
        assert info["shape"] == shape
        assert (out[0] - state[0]).abs().max() > 1e-3  # the run moved the weights
        _check_error_model(out, cpu, f64, loss, f64_loss, f"shape {shape}")
        runs[shape] = (out, loss)
    _check_same_bits_per_cluster(runs)


def test_heads_beyond_the_grid_run_in_several_launches(emu):
    # 2 layers x 3 heads with at most 4 heads per launch: launches of 4 and 2 heads, the same bits as one launch.
    a, b, t, state, norm0 = _problem(2, 3, 20, 24, 8, 5, seed=3)
    kw = dict(scale=0.7, step0=0, steps=3, renorm_every=2, renorm_mode=0, lr=1e-2)
    for shape in (5, 8):
        whole, loss_whole, _, _, _ = _emu_run(emu, a, b, t, state, norm0, shape=shape, **kw)
        split, loss_split, _, _, _ = _emu_run(emu, a, b, t, state, norm0, shape=shape, max_grid_y=4, **kw)
        assert all(torch.equal(u, v) for u, v in zip(whole, split)) and torch.equal(loss_whole, loss_split)


@pytest.mark.parametrize("shape", range(NUM_SHAPES))
def test_gradient_mode_matches_float64(emu, shape):
    a, b, t, state, norm0 = _problem(2, 2, 30, 21, 12, 9, seed=11)
    dq, dk, loss = torch.ops.impulse_attn.fit_gradients(a.double(), b.double(), t.double(), state[0].double(),
                                                        state[1].double(), 0.6, 0)
    dq32, dk32, _ = torch.ops.impulse_attn.fit_gradients(a, b, t, state[0], state[1], 0.6, 0)
    out, gloss, gq, gk, _ = _emu_run(emu, a, b, t, state, norm0, scale=0.6, step0=0, steps=1, renorm_every=1,
                                     renorm_mode=0, lr=1e-2, shape=shape, grads=True)
    _check_error_model((gq, gk), (dq32, dk32), (dq, dk), gloss, loss, f"gradients, shape {shape}")
    for i in range(6):
        assert torch.equal(out[i], state[i])  # gradient mode updates nothing


def test_refusals_are_clear(emu):
    a, b, t, state, norm0 = _problem(1, 1, 20, 24, 8, 5, seed=1)
    kw = dict(scale=0.7, step0=0, steps=1, renorm_every=1, renorm_mode=0, lr=1e-2, expect_ok=False)
    # A cluster shape on a GPU without clusters.
    out, loss, _, _, info = _emu_run(emu, a, b, t, state, norm0, shape=0, device=GPUS["A100"], **kw)
    assert info["shape"] == -1 and "compute capability 9.0" in info["error"]
    assert torch.equal(out[0], state[0]) and torch.isnan(loss).all()  # nothing ran
    # A problem no shape can hold: 8 row buffers of N=2048 floats are 64 KiB, a T4's whole opt-in.
    a, b, t, state, norm0 = _problem(1, 1, 2048, 16, 4, 3, seed=2)
    _, _, _, _, info = _emu_run(emu, a, b, t, state, norm0, device=GPUS["T4"], **kw)
    assert info["shape"] == -1
    assert "does not fit this GPU" in info["error"] and "N=2048" in info["error"]


# The paper's configuration, one head of it (heads are independent; loss_heads=8 keeps the layer's scaling).
PAPER_GRID, PAPER_D, PAPER_R, PAPER_HEADS = (16, 16), 512, 64, 8
# Which shape the planner gives each GPU for it (docs/kernels/fit_cuda.md), and the forced shapes that complete
# the set.
PAPER_PLAN = {"H100": 0, "A100": 5, "L4": 6, "V100": 7, "T4": 8}
PAPER_FORCED = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def paper_problem():
    x = sincos_2d(PAPER_GRID, PAPER_D)
    a, b = reduced.factor_basis(x)  # the real basis: the encoding's numerical rank at float32 resolution
    g = torch.Generator().manual_seed(0)
    t = impulse_targets(draw_offsets(PAPER_HEADS, 3, generator=g), PAPER_GRID)[None, :1].contiguous()
    q0, k0 = init_qk(1, PAPER_HEADS, PAPER_D, PAPER_R, g)
    q0, k0 = q0[:, :1].contiguous(), k0[:, :1].contiguous()
    state = (q0, k0, *[torch.zeros_like(q0) for _ in range(4)])
    norm0 = q0.norm(dim=-2).mean(dim=(-1, -2))
    # The recipe's scale and renormalization (step 0 renormalizes); lr 1e-3 so that two steps move the weights
    # well above float32 resolution.
    kw = dict(lr=1e-3, scale=0.1, renorm_every=100, renorm="code")
    cpu, f64, f64_loss = _twin_and_truth(a, b, t, state, norm0, 0, 2, loss_heads=PAPER_HEADS, **kw)
    return a, b, t, state, norm0, cpu, f64, f64_loss


def test_paper_layout_every_gpu_and_every_shape(emu, paper_problem):
    """N=256, D=512, r=64, basis 27: the planner's shape for each GPU of the table, run with that GPU's limits
    (so within its shared memory), then the remaining shapes forced; two Adam steps each."""
    a, b, t, state, norm0, cpu, f64, f64_loss = paper_problem
    assert (t.shape[-1], a.shape[1]) == (256, 27)
    kw = dict(scale=0.1, step0=0, steps=2, renorm_every=100, renorm_mode=0, lr=1e-3, loss_heads=PAPER_HEADS)
    runs = {}
    for gpu, expected in PAPER_PLAN.items():
        optin, cc = GPUS[gpu]
        out, loss, _, _, info = _emu_run(emu, a, b, t, state, norm0, device=GPUS[gpu], max_tile_rows=64, **kw)
        assert info["shape"] == expected, (gpu, info)
        assert info["dynamic_bytes"] + STATIC_SMEM <= optin
        assert (out[0] - state[0]).abs().max() > 1e-4
        _check_error_model(out, cpu, f64, loss, f64_loss, f"{gpu}: shape {expected}")
        runs[expected] = (out, loss)
    for shape in PAPER_FORCED:
        out, loss, _, _, info = _emu_run(emu, a, b, t, state, norm0, shape=shape, **kw)
        _check_error_model(out, cpu, f64, loss, f64_loss, f"shape {shape}")
        runs[shape] = (out, loss)
    assert sorted(runs) == list(range(NUM_SHAPES))
    _check_same_bits_per_cluster(runs)
