"""The CUDA fit (impulse_attn._C, csrc/fit_cuda*.{cu,cuh}) on a GPU; skipped without CUDA.

What runs: the CUDA op against the CPU extension (the float32 CPU twin) and against float64 truth (the same op in
float64 on the CPU), with the planner's choice and with every launch shape forced in turn (the op's `plan`
argument), on the tests' odd shapes and on the paper's configuration (6 layers x 8 heads, 16x16 grid so N=256,
D=512, r=64, the sin-cos encoding's real basis), in both modes (Adam steps, gradients), and with more heads than
one launch's grid allows. Shapes this GPU cannot run must be refused with the planner's reason, leaving the
inputs untouched.

Error model (as in tests/test_cuda_emulated.py, whose emulation runs the same kernel source on the CPU): the GPU
kernel and the CPU twin evaluate the same algebra in float32 with the same per-element functions (fit_math.h),
differing only in the order and blocking of their sums (and in nvcc's fused multiply-adds, which round once where
the CPU may round twice). A length-m sum has error at most γ_m·Σ|terms| in any order and in practice of order
√m·eps32·Σ|terms|, so the two errors against float64 are of the same size in either direction, and Adam turns
gradient rounding into weight drift in both alike. Hence: max error <= 4 x the twin's + 1e-6 x the largest value
(about 8 float32 ulps of it, for a twin that lands unusually close by chance); per-head losses to 1e-5 relative.
Launch shapes with the same cluster size run the same instructions on the same values (state and B placement
and tiling change no arithmetic), so they must agree bit for bit.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py
from benchmarks.gpu_check.compiles import NO_LAUNCHES  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_guard.py
from launch_guard import declared_launches_and_no_pin_left  # noqa: E402,F401  (autouse)

LAUNCHES = NO_LAUNCHES   # the CUDA fit is nvcc-built at install: nothing here compiles at run time

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: the CUDA fit is tested through the emulation in tests/test_cuda_emulated.py",
                allow_module_level=True)

from impulse_attn.fitting.iterative import init_qk  # noqa: E402
from impulse_attn.fitting import compiled as fit_ext
from impulse_attn.fitting import reduced  # noqa: E402
from impulse_attn.targets import draw_offsets, impulse_targets, sincos_2d  # noqa: E402

_OK, _WHY = fit_ext.available("cuda")
if not _OK:
    pytest.skip(f"the compiled CUDA fit is not available: {_WHY}", allow_module_level=True)

from impulse_attn import _C  # noqa: E402

SHAPES = [s["shape"] for s in _C.launch_shapes()]
CLUSTER = {s["shape"]: s["cluster"] for s in _C.launch_shapes()}
# Known GPUs: (compute capability, opt-in shared memory per block) -> the paper configuration's shape
# (docs/kernels/fit_cuda.md).
PAPER_TABLE = {((7, 0), 98304): 7, ((7, 5), 65536): 8, ((8, 0), 166912): 5, ((8, 9), 101376): 6,
               ((9, 0), 232448): 0}


@pytest.fixture(scope="module")
def limits():
    lim = _C.cuda_launch_limits()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    assert (lim["cc_major"], lim["cc_minor"]) == (props.major, props.minor)
    optin = getattr(props, "shared_memory_per_block_optin", None)
    if optin:
        assert lim["smem_optin"] == optin
    assert 0 < lim["static_smem"] < lim["smem_optin"]  # the kernel's Adam coefficients
    assert lim["code_version"] >= 70
    return lim


def _plan(limits, n, d, r, basis, layers=1, heads=1, shape=-1):
    return _C.plan_launch(layers=layers, heads=heads, n=n, d=d, r=r, basis=basis, shape=shape, **limits)


def _problem(layers, heads, n, d, r, basis, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, basis, generator=g) / basis ** 0.5
    b = torch.linalg.qr(torch.randn(d, basis, generator=g, dtype=torch.float64))[0].T.float().contiguous()
    idx = torch.randint(0, n, (layers, heads, n), generator=g)
    targets = torch.nn.functional.one_hot(idx, n).float()
    targets[..., :2, :] = 0
    q = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    kk = (torch.rand(layers, heads, d, r, generator=g) * 2 - 1) * (1 / (r * heads)) ** 0.5
    state = (q, kk, *[torch.zeros_like(q) for _ in range(4)])
    norm0 = q.norm(dim=-2).mean(dim=(-1, -2))
    return a, b, targets.contiguous(), state, norm0


def _cuda(*ts):
    return [t.cuda() for t in ts]


def _fit(a, b, t, state, norm0, step0, steps, hyper, plan=-1):
    lr, scale, every, mode, loss_heads = hyper
    return torch.ops.impulse_attn.fit_iterative(a, b, t, *state, norm0, step0, steps, lr, scale, every, mode,
                                                0.9, 0.999, 1e-8, loss_heads, plan)


def _references(a, b, t, state, norm0, step0, steps, hyper):
    twin = _fit(a, b, t, state, norm0, step0, steps, hyper)
    exact = _fit(a.double(), b.double(), t.double(), [s.double() for s in state], norm0.double(), step0, steps,
                 hyper)
    return twin, exact


def _check(ours, twin, exact, label):
    """ours: CUDA outputs (6 state tensors + loss, or dq, dk, loss); twin, exact: CPU float32 / float64."""
    *values, loss = ours
    *values_twin, _ = twin
    *values_exact, loss_exact = exact
    for i, (o, tw, ex) in enumerate(zip(values, values_twin, values_exact)):
        o = o.cpu()
        assert torch.isfinite(o).all(), f"{label}: output {i} has non-finite values"
        err = (o.double() - ex).abs().max().item()
        err_twin = (tw.double() - ex).abs().max().item()
        bound = 4 * err_twin + 1e-6 * ex.abs().max().item()
        assert err <= bound, f"{label}: output {i}: error {err:.3e} > {bound:.3e} (twin's {err_twin:.3e})"
    torch.testing.assert_close(loss.cpu().double(), loss_exact, rtol=1e-5, atol=1e-9, msg=label)


def _same_bits(runs):
    first = {}
    for shape, outs in runs.items():
        cl = CLUSTER[shape]
        if cl not in first:
            first[cl] = (shape, outs)
            continue
        ref_shape, ref = first[cl]
        for i, (u, v) in enumerate(zip(outs, ref)):
            assert torch.equal(u, v), f"shape {shape} differs from shape {ref_shape} (cluster {cl}) in output {i}"


def _every_shape(limits, a, b, t, state, norm0, step0, steps, hyper, label):
    """Runs the planner's choice and every shape forced in turn; checks each against the references."""
    layers, heads, n, _ = t.shape
    d, r = state[0].shape[-2:]
    basis = a.shape[1]
    twin, exact = _references(a, b, t, state, norm0, step0, steps, hyper)
    ca, cb, ct, cn = _cuda(a, b, t, norm0)
    cstate = _cuda(*state)
    best = _plan(limits, n, d, r, basis, layers, heads)
    assert best["plans"], best["reason"]
    out = _fit(ca, cb, ct, cstate, cn, step0, steps, hyper)
    torch.cuda.synchronize()
    assert _C.cuda_last_launch_shape() == best["plans"][0]["shape"]
    _check(out, twin, exact, f"{label}, planner's choice")
    runs = {}
    for shape in SHAPES:
        forced = _plan(limits, n, d, r, basis, layers, heads, shape=shape)
        if not forced["plans"]:
            with pytest.raises(RuntimeError) as info:
                _fit(ca, cb, ct, cstate, cn, step0, steps, hyper, plan=shape)
            assert f"launch shape {shape}" in str(info.value)
            continue
        out = _fit(ca, cb, ct, cstate, cn, step0, steps, hyper, plan=shape)
        torch.cuda.synchronize()
        assert _C.cuda_last_launch_shape() == shape
        _check(out, twin, exact, f"{label}, shape {shape}")
        runs[shape] = [o.cpu() for o in out]
    assert runs, "no launch shape ran"
    _same_bits(runs)
    for s, s0 in zip(cstate, state):  # the op never writes its inputs
        assert torch.equal(s.cpu(), s0)
    return runs


# (layers, heads, n, d, r, basis, renorm_mode), as in the emulation tests.
CONFIGS = [
    (2, 3, 20, 24, 8, 5, 0),
    (1, 2, 42, 37, 40, 34, 1),
    (1, 2, 10, 9, 3, 3, 0),
    (2, 1, 13, 16, 6, 7, 2),
    (1, 3, 100, 40, 8, 12, 1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"n{c[2]}-d{c[3]}-r{c[4]}-basis{c[5]}")
def test_every_launch_shape_matches_the_cpu_twin(limits, cfg):
    layers, heads, n, d, r, basis, mode = cfg
    a, b, t, state, norm0 = _problem(layers, heads, n, d, r, basis, seed=sum(cfg[:6]))
    runs = _every_shape(limits, a, b, t, state, norm0, 2, 7, (1e-2, 0.7, 3, mode, 0), f"n={n}")
    assert any((o[0] - state[0]).abs().max() > 1e-3 for o in runs.values())  # the weights moved


def test_gradient_mode_every_shape(limits):
    a, b, t, state, norm0 = _problem(2, 2, 30, 21, 12, 9, seed=11)
    exact = torch.ops.impulse_attn.fit_gradients(a.double(), b.double(), t.double(), state[0].double(),
                                                 state[1].double(), 0.6, 0)
    twin = torch.ops.impulse_attn.fit_gradients(a, b, t, state[0], state[1], 0.6, 0)
    ca, cb, ct, cq, ck = _cuda(a, b, t, state[0], state[1])
    runs = {}
    for shape in SHAPES:
        if not _plan(limits, 30, 21, 12, 9, 2, 2, shape=shape)["plans"]:
            continue
        out = torch.ops.impulse_attn.fit_gradients(ca, cb, ct, cq, ck, 0.6, 0, shape)
        torch.cuda.synchronize()
        assert _C.cuda_last_launch_shape() == shape
        _check(out, twin, exact, f"gradients, shape {shape}")
        runs[shape] = [o.cpu() for o in out]
    _same_bits(runs)
    assert torch.equal(cq.cpu(), state[0]) and torch.equal(ck.cpu(), state[1])


def test_more_heads_than_one_launch_holds(limits):
    # 65538 heads of a tiny problem: more than grid.y allows (65535), so the launcher splits them over launches.
    a, b, t, state, norm0 = _problem(2, 32769, 6, 5, 2, 2, seed=5)
    hyper = (1e-2, 0.7, 2, 0, 0)
    twin, exact = _references(a, b, t, state, norm0, 0, 3, hyper)
    plan = _plan(limits, 6, 5, 2, 2, 2, 32769)["plans"][0]
    assert plan["launches"] >= 2
    out = _fit(*_cuda(a, b, t), _cuda(*state), norm0.cuda(), 0, 3, hyper)
    _check(out, twin, exact, "65538 heads")


@pytest.fixture(scope="module")
def paper():
    x = sincos_2d((16, 16), 512)
    a, b = reduced.factor_basis(x)
    g = torch.Generator().manual_seed(0)
    t = torch.stack([impulse_targets(draw_offsets(8, 3, generator=g), (16, 16)) for _ in range(6)]).contiguous()
    q0, k0 = init_qk(6, 8, 512, 64, g)
    state = (q0, k0, *[torch.zeros_like(q0) for _ in range(4)])
    norm0 = q0.norm(dim=-2).mean(dim=(-1, -2))
    return a, b, t, state, norm0


def test_paper_configuration_every_shape(limits, paper):
    """6 layers x 8 heads, N=256, D=512, r=64, basis 27: it must have a plan on this GPU (compute capability 7.0
    and up), the documented one on the GPUs of the table, and every shape that fits must agree with the CPU."""
    a, b, t, state, norm0 = paper
    assert (t.shape, a.shape[1]) == ((6, 8, 256, 256), 27)
    best = _plan(limits, 256, 512, 64, 27, 6, 8)
    assert best["plans"], best["reason"]
    key = ((limits["cc_major"], limits["cc_minor"]), limits["smem_optin"])
    if key in PAPER_TABLE and limits["code_version"] >= 10 * limits["cc_major"]:
        assert best["plans"][0]["shape"] == PAPER_TABLE[key]
    # The recipe (lr 1e-4, scale 0.1, renorm "code" every 100 from step 0), 12 steps.
    _every_shape(limits, a, b, t, state, norm0, 0, 12, (1e-4, 0.1, 100, 0, 0), "paper")


def test_paper_configuration_gradients(limits, paper):
    a, b, t, state, norm0 = paper
    exact = torch.ops.impulse_attn.fit_gradients(a.double(), b.double(), t.double(), state[0].double(),
                                                 state[1].double(), 0.1, 0)
    twin = torch.ops.impulse_attn.fit_gradients(a, b, t, state[0], state[1], 0.1, 0)
    out = torch.ops.impulse_attn.fit_gradients(*_cuda(a, b, t, state[0], state[1]), 0.1, 0)
    _check(out, twin, exact, "paper gradients")


def test_public_entry_point_on_cuda(paper):
    """fit_ext.fit_iterative(device='cuda') runs and agrees with the CPU path within the error model."""
    x = sincos_2d((16, 16), 512)
    _, _, t, state, _ = paper
    kw = dict(steps=10, lr=1e-4, scale=0.1, renorm_every=100, renorm="code", q0=state[0], k0=state[1],
              return_loss=True)
    q_gpu, k_gpu, loss_gpu = fit_ext.fit_iterative(x, t, 64, device="cuda", **kw)
    q_cpu, k_cpu, loss_cpu = fit_ext.fit_iterative(x, t, 64, **kw)
    # float64 truth in the same basis (the float32 default drops singular values below 1e-8·σ_max).
    q64, k64, loss64 = fit_ext.fit_iterative(x, t.double(), 64, dtype=torch.float64, basis_rtol=1e-8,
                                             **dict(kw, q0=state[0].double(), k0=state[1].double()))
    _check((q_gpu, k_gpu, loss_gpu), (q_cpu, k_cpu, loss_cpu), (q64, k64, loss64), "fit_iterative(device='cuda')")
