"""The compiled impulse fit (impulse_attn._C, csrc/) against the autograd reference of the published recipe.

Tolerances, and why (none depends on which BLAS or vector code path this CPU takes):
- float64 kernel vs float64 reference: 1e-10. The reduced basis changes no iterate in exact arithmetic (it drops
  singular values below 1e-13·σ_max), so what is left is float64 rounding; measured 1e-15 to 1e-12.
- float32 gradients (one evaluation): a normwise first-order model, max|error| ≤ 4·(N + D + r)·eps32·max|dQ| per
  head (``_gradient_bound``): N + D + r is the total length of the sums each gradient element goes through
  (logits over D, softmax backward over N, the products with K over r). Element-wise running-error bounds are
  useless here: the gradient is a small difference of large terms, so |terms|-based bounds exceed the gradient
  itself, while the kernel's actual error stays a few eps relative to the gradient.
- float32 iterates (many Adam steps): Adam divides each gradient by its own running RMS, so a gradient that is
  itself at rounding level can take a full step of either sign; no a-priori bound on the trajectory is useful.
  Its sensitivity is measured instead, in float64: the same fit with float32-sized rounding injected at every step
  (each gradient element moved uniformly within the gradient model's bound, each weight and Adam moment within
  eps32 of itself; three noise seeds) spreads by some amount; the float32 kernel must stay within 4 times that
  spread of the exact trajectory (plus 1e-6 of the largest weight for the case where the spread is tiny).
"""
from __future__ import annotations

import pytest
import torch

from impulse_attn.fitting.iterative import fit_iterative_reference, fit_loss, init_qk
from impulse_attn.fitting.reduced import factor_basis, fit_iterative_factored, run_steps as reduced_run_steps
from impulse_attn.fitting.report import attention_maps
from impulse_attn.fitting import compiled as fit_ext
from impulse_attn.targets import draw_offsets, impulse_targets, sincos_2d

_OK, _WHY = fit_ext.available("cpu")
pytestmark = pytest.mark.skipif(not _OK, reason=f"compiled extension not available: {_WHY}")

# (grid, D, r, heads, kernel, layers, renorm). rank(P) at float32 resolution: 11 for 5x7 (D=64), 19 for 9x13
# (D=64), 7 for 4x4; the ranks below are on both sides of it.
SHAPES = [
    ((5, 7), 64, 8, 1, 3, 1, "code"),       # one head, r < rank(P)
    ((5, 7), 64, 16, 12, 5, 1, "code"),     # twelve heads, k = 5, r > rank(P)
    ((9, 13), 64, 24, 3, 5, 2, "columns"),  # non-square, two layers, r > rank(P)
    ((4, 4), 32, 4, 2, 3, 1, "none"),       # r < rank(P) = 7
]
RECIPE = dict(steps=40, lr=1e-3, renorm_every=7)  # a renorm period that does not divide the step count


def _problem(grid, dim, rank, heads, kernel, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sincos_2d(grid, dim)
    targets = torch.stack([impulse_targets(draw_offsets(heads, kernel, generator=g), grid) for _ in range(layers)])
    q0, k0 = init_qk(layers, heads, dim, rank, g)
    return x, targets, q0, k0


def _float32_sized_spread(x, t, q0, k0, q_ref, k_ref, *, steps, lr, scale, renorm_every, renorm, seeds=3):
    """Largest deviation from the exact float64 trajectory of float64 trajectories carrying float32-sized
    rounding at every step: how much this fit amplifies the rounding a float32 run makes."""
    from impulse_attn.fitting.iterative import init_norm, renormalize
    from impulse_attn.fitting.reduced import adam_update_, factored_gradients
    a, b = factor_basis(x, dtype=torch.float64)
    eps32 = torch.finfo(torch.float32).eps
    target_norm = init_norm(q0)
    worst_q = worst_k = 0.0
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)

        def jitter(v, amplitude):
            return v + amplitude * (2 * torch.rand(v.shape, generator=g, dtype=torch.float64) - 1)
        q, k = q0.clone(), k0.clone()
        mq, vq, mk, vk = (torch.zeros_like(q0) for _ in range(4))
        for step in range(steps):
            if renorm_every > 0 and step % renorm_every == 0:
                renormalize(q, k, target_norm, renorm)
            dq, dk, _ = factored_gradients(a, b, t, q, k, scale)
            bq, bk = _gradient_bound(x, t, q, k, scale, slack=1.0)
            dq, dk = jitter(dq, bq), jitter(dk, bk)
            adam_update_(q, dq, mq, vq, step + 1, lr)
            adam_update_(k, dk, mk, vk, step + 1, lr)
            for v in (q, k, mq, vq, mk, vk):
                v.copy_(jitter(v, eps32 * v.abs()))
        worst_q = max(worst_q, float((q - q_ref).abs().max()))
        worst_k = max(worst_k, float((k - k_ref).abs().max()))
    return worst_q, worst_k


def _gradient_bound(x, t, q, k, scale, slack=4.0):
    """Normwise bound on |fl32(dQ) − dQ|, |fl32(dK) − dK| per head: slack·(N + D + r)·eps32·max|dQ_head| (see the
    module docstring); returned as tensors of the gradients' shapes."""
    from impulse_attn.fitting.iterative import fit_loss
    q, k = q.detach().clone().requires_grad_(True), k.detach().clone().requires_grad_(True)
    fit_loss(x, q, k, t, scale).backward()
    n, d, r = t.shape[-1], q.shape[-2], q.shape[-1]
    factor = slack * (n + d + r) * torch.finfo(torch.float32).eps
    return tuple(factor * g.abs().amax(dim=(-1, -2), keepdim=True).expand_as(g) for g in (q.grad, k.grad))


def _f64(*ts):
    return [t.double() for t in ts]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0][0]}x{s[0][1]}-D{s[1]}-r{s[2]}-h{s[3]}-k{s[4]}")
def test_iterates_match_reference(shape):
    grid, dim, rank, heads, kernel, layers, renorm = shape
    x, t, q0, k0 = _problem(grid, dim, rank, heads, kernel, layers)
    kw = dict(RECIPE, scale=0.5, renorm=renorm)
    x64, t64, q064, k064 = _f64(x, t, q0, k0)
    q_ref, k_ref = fit_iterative_reference(x64, t64, rank, q0=q064, k0=k064, **kw)

    q, k = fit_ext.fit_iterative(x, t64, rank, q0=q064, k0=k064, dtype=torch.float64, **kw)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-10)

    q32, k32 = fit_ext.fit_iterative(x, t, rank, q0=q0, k0=k0, **kw)
    spread_q, spread_k = _float32_sized_spread(x64, t64, q064, k064, q_ref, k_ref, **kw)
    for ours, exact, spread in ((q32, q_ref, spread_q), (k32, k_ref, spread_k)):
        assert ours.dtype == torch.float32 and ours.shape == (layers, heads, dim, rank)
        err = (ours.double() - exact).abs().max().item()
        assert err <= 4 * spread + 1e-6 * exact.abs().max().item(), (err, spread)
    assert (q_ref - q064).abs().max() > 1e-3  # the fit moved: the comparison is not of two inits


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_every_instruction_set_is_exact(isa, monkeypatch):
    # The widest instruction set is what the other tests use; the narrower ones are separate code paths.
    grid, dim, rank, heads, kernel, layers, renorm = SHAPES[2]
    x, t, q0, k0 = _f64(*_problem(grid, dim, rank, heads, kernel, layers))
    kw = dict(RECIPE, steps=15, scale=0.5, renorm=renorm)
    q_ref, k_ref = fit_iterative_reference(x, t, rank, q0=q0, k0=k0, **kw)
    monkeypatch.setenv("IMPULSE_ATTN_CPU_ISA", isa)
    q, k = fit_ext.fit_iterative(x, t, rank, q0=q0, k0=k0, dtype=torch.float64, **kw)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES[1:3], ids=["5x7-h12", "9x13-l2"])
def test_single_step_gradients_equal_autograd(shape):
    grid, dim, rank, heads, kernel, layers, _ = shape
    x, t, q0, k0 = _problem(grid, dim, rank, heads, kernel, layers, seed=3)
    x64, t64, q64, k64 = _f64(x, t, q0, k0)
    q = q64.clone().requires_grad_(True)
    k = k64.clone().requires_grad_(True)
    loss = fit_loss(x64, q, k, t64, 0.5)
    loss.backward()

    dq, dk, head_loss = fit_ext.fit_gradients(x, t64, q64, k64, 0.5)
    torch.testing.assert_close(dq, q.grad, rtol=1e-9, atol=1e-16)
    torch.testing.assert_close(dk, k.grad, rtol=1e-9, atol=1e-16)
    # The per-head losses average (over heads) to each layer's loss, and sum over layers to the total.
    assert head_loss.mean(dim=1).sum().item() == pytest.approx(loss.item(), rel=1e-12)

    # float32: every element within the running-error bound
    dq32, dk32, _ = fit_ext.fit_gradients(x, t, q0, k0, 0.5)
    bq, bk = _gradient_bound(x64, t64, q0.double(), k0.double(), 0.5)
    for name, ours, exact, bound in (("dq", dq32, q.grad, bq), ("dk", dk32, k.grad, bk)):
        err = (ours.double() - exact).abs()
        assert bool((err <= bound).all()), (name, float((err / bound).max()))
    # and the bound is not vacuous: a 1e-3 relative slip in the gradient exceeds it
    assert not bool(((dq32.double() * (1 + 1e-3) - q.grad).abs() <= bq).all())


def test_reduced_basis_fit_gives_the_full_fits_maps():
    # The reduced-basis fit (kernel and its PyTorch twin) against the full-width autograd fit, float32, compared
    # where it matters: the attention maps (measured difference 4e-7; the fit moves them by 0.39).
    x, t, q0, k0 = _problem((8, 8), 64, 16, 3, 3, 1, seed=1)
    kw = dict(steps=100, lr=2e-3, scale=0.5, renorm_every=50, renorm="code")
    q_full, k_full = fit_iterative_reference(x, t, 16, q0=q0, k0=k0, **kw)
    q_red, k_red = fit_iterative_factored(x, t, 16, q0=q0, k0=k0, **kw)
    q_ext, k_ext = fit_ext.fit_iterative(x, t, 16, q0=q0, k0=k0, **kw)
    maps_full = attention_maps(x.double(), q_full.double(), k_full.double(), 0.5)
    maps_init = attention_maps(x.double(), q0.double(), k0.double(), 0.5)
    assert (maps_full - maps_init).abs().max() > 0.2
    for q, k in ((q_red, k_red), (q_ext, k_ext)):
        maps = attention_maps(x.double(), q.double(), k.double(), 0.5)
        assert (maps - maps_full).abs().max().item() < 1e-5


def test_reduced_prototype_is_exact_in_float64():
    x, t, q0, k0 = _f64(*_problem((5, 7), 64, 16, 3, 3, 2, seed=4))
    kw = dict(RECIPE, scale=0.5, renorm="code")
    q_ref, k_ref = fit_iterative_reference(x, t, 16, q0=q0, k0=k0, **kw)
    q, k = fit_iterative_factored(x, t, 16, q0=q0, k0=k0, **kw)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-10)


def test_chunked_runs_resume_exactly_and_match_the_pytorch_twin():
    x, t, q0, k0 = _f64(*_problem((5, 7), 64, 16, 3, 3, 2, seed=5))
    a, b = factor_basis(x, dtype=torch.float64)
    state = (q0, k0, *[torch.zeros_like(q0) for _ in range(4)])
    norm0 = q0.norm(dim=-2).mean(dim=(-1, -2))
    kw = dict(lr=1e-3, scale=0.5, renorm_every=7, renorm="code")
    whole, loss_whole = fit_ext.run_steps(a, b, t, state, norm0, 0, 30, **kw)
    half, _ = fit_ext.run_steps(a, b, t, state, norm0, 0, 17, **kw)
    rest, loss_rest = fit_ext.run_steps(a, b, t, half, norm0, 17, 13, **kw)
    for u, v in zip(whole, rest):
        assert torch.equal(u, v)  # same Adam moments, step counter and renorm phase: bit for bit
    assert torch.equal(loss_whole, loss_rest)
    twin, loss_twin = reduced_run_steps(a, b, t, state, norm0, 0, 30, **kw)
    for u, v in zip(whole, twin):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss_whole, loss_twin, rtol=1e-10, atol=0)
    assert all(torch.equal(s, s0) for s, s0 in zip(state, (q0, k0)))  # inputs untouched


def _op_args(dtype=torch.float32, layers=2, heads=3):
    x, t, q0, k0 = _problem((5, 7), 32, 8, heads, 3, layers, seed=6)
    a, b = factor_basis(x, dtype=dtype)
    q0, k0, t = q0.to(dtype), k0.to(dtype), t.to(dtype)
    moments = [torch.zeros_like(q0) for _ in range(4)]
    norm0 = q0.norm(dim=-2).mean(dim=(-1, -2))
    return a, b, t, q0, k0, moments, norm0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    a, b, t, q0, k0, moments, norm0 = _op_args(dtype)
    torch.library.opcheck(torch.ops.impulse_attn.fit_iterative.default,
                          (a, b, t, q0, k0, *moments, norm0, 0, 5, 1e-3, 0.5, 3, 0))
    torch.library.opcheck(torch.ops.impulse_attn.fit_iterative.default,
                          (a, b, t, q0, k0, *moments, norm0, 4, 3, 1e-3, 0.5, 2, 1, 0.8, 0.99, 1e-6, 5))
    torch.library.opcheck(torch.ops.impulse_attn.fit_gradients.default, (a, b, t, q0, k0, 0.5))


def test_schema_defaults_come_from_the_shared_constants():
    """The op schema's defaults (built from csrc/fit_constants.h) are the Python side's constants."""
    from impulse_attn.fitting import reduced
    from impulse_attn.fitting.iterative import RENORM_MODES
    schema = torch.ops.impulse_attn.fit_iterative.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.default_value is not None}
    assert defaults == {"beta1": reduced.ADAM_BETAS[0], "beta2": reduced.ADAM_BETAS[1], "eps": reduced.ADAM_EPS,
                        "loss_heads": 0, "plan": -1}
    schema = torch.ops.impulse_attn.fit_gradients.default._schema
    assert {a.name: a.default_value for a in schema.arguments if a.default_value is not None} == {
        "loss_heads": 0, "plan": -1}
    assert RENORM_MODES == ("code", "columns", "none")  # renorm_mode 0, 1, 2 in csrc/fit_constants.h


def test_plan_argument_is_checked_and_ignored_on_the_cpu():
    a, b, t, q0, k0, moments, norm0 = _op_args()
    args = (a, b, t, q0, k0, *moments, norm0, 0, 3, 1e-3, 0.5, 2, 0, 0.9, 0.999, 1e-8, 0)
    best = torch.ops.impulse_attn.fit_iterative(*args)
    forced = torch.ops.impulse_attn.fit_iterative(*args, 8)
    assert all(torch.equal(u, v) for u, v in zip(best, forced))
    grads = torch.ops.impulse_attn.fit_gradients(a, b, t, q0, k0, 0.5, 0, 3)
    assert all(torch.equal(u, v) for u, v in zip(grads, torch.ops.impulse_attn.fit_gradients(a, b, t, q0, k0, 0.5)))
    for bad in (-2, 9):
        with pytest.raises(RuntimeError, match="plan must be -1"):
            torch.ops.impulse_attn.fit_iterative(*args, bad)
        with pytest.raises(RuntimeError, match="plan must be -1"):
            torch.ops.impulse_attn.fit_gradients(a, b, t, q0, k0, 0.5, 0, bad)
    torch.library.opcheck(torch.ops.impulse_attn.fit_iterative.default, (*args, 5))


def test_op_under_torch_compile():
    a, b, t, q0, k0, moments, norm0 = _op_args()

    def fit(q, k):
        out = torch.ops.impulse_attn.fit_iterative(a, b, t, q, k, *moments, norm0, 0, 6, 1e-3, 0.5, 4, 0)
        return out[0] * 2, out[6].sum()

    eager = fit(q0, k0)
    compiled = torch.compile(fit, backend="aot_eager", fullgraph=True)(q0, k0)
    for u, v in zip(eager, compiled):
        assert torch.equal(u, v)


def test_fit_impulse_cpp_backend_matches_reference():
    from impulse_attn import fit_impulse
    kw = dict(num_heads=3, grid_size=(5, 7), kernel_size=3, dim=64, head_dim=16, steps=40, lr=1e-3, scale=0.5,
              seed=2, layers=2, warn=False)
    ref = fit_impulse(**kw, backend="reference")
    ext = fit_impulse(**kw, backend="cpp")
    assert ext.report.backend == "cpp"
    # what the fit is for, the maps: the float32 trajectories may differ elementwise (see the module docstring)
    # but both fits reach the same quality
    assert ext.report.mse == pytest.approx(ref.report.mse, rel=1e-3)
    assert ext.report.argmax_hit == ref.report.argmax_hit
    assert fit_impulse(**kw, backend="auto").report.backend in ("cpp", "cuda")


def test_backends_report_the_extension():
    import impulse_attn
    from impulse_attn import _C
    status = impulse_attn.backends()
    assert status["fit/cpp"] == "available"
    assert _C.cpu_isa() in ("avx512", "avx2", "base")
    if not _C.has_cuda():
        assert "without CUDA" in status["fit/cuda"] or "no CUDA device" in status["fit/cuda"]


# ---------------------------------------------------------------------------------------------------------------
# bad input: the public API (fit_impulse, tests/test_fitting.py) validates every argument; the op checks them again
# in C++ (TORCH_CHECK), which is what is tested here.


RAW_BAD = [
    (lambda a: a.update(b=a["b"][:, :-1].contiguous()), "b must have shape"),
    (lambda a: a.update(targets=a["targets"].transpose(-1, -2)), "targets must be contiguous"),
    (lambda a: a.update(k=a["k"].double()), "k must have dtype"),
    (lambda a: a.update(k=a["k"][:, :1].contiguous()), "k must have the shape of q"),
    (lambda a: a.update(exp_avg_sq_k=a["exp_avg_sq_k"][..., :3].contiguous()), "exp_avg_sq_k"),
    (lambda a: a.update(norm0=a["norm0"][:1].contiguous()), "norm0"),
    (lambda a: a.update(targets=a["targets"][:, :, :-1].contiguous()), "targets must have shape"),
    (lambda a: a.update(steps=-1), "steps"),
    (lambda a: a.update(renorm_mode=7), "renorm_mode"),
    (lambda a: a.update(lr=float("inf")), "lr"),
    (lambda a: a.update(loss_heads=-1), "loss_heads"),
    (lambda a: a.update(renorm_every=2 ** 31), "renorm_every must be in"),
    (lambda a: a.update(renorm_every=-1), "renorm_every must be in"),
]


@pytest.mark.parametrize("case", range(len(RAW_BAD)))
def test_raw_op_checks_its_arguments(case):
    a, b, t, q0, k0, moments, norm0 = _op_args()
    args = dict(a=a, b=b, targets=t, q=q0, k=k0, exp_avg_q=moments[0], exp_avg_sq_q=moments[1],
                exp_avg_k=moments[2], exp_avg_sq_k=moments[3], norm0=norm0, step0=0, steps=2, lr=1e-3, scale=0.5,
                renorm_every=1, renorm_mode=0, beta1=0.9, beta2=0.999, eps=1e-8, loss_heads=0)
    mutate, message = RAW_BAD[case]
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.impulse_attn.fit_iterative(**args)
