import math

import pytest
import torch

from impulse_attn import ImpulseAttention, ViTAttention
from impulse_attn.attention import attention, reference_attention
from impulse_attn.fitting.report import attention_maps

from error_model import assert_within, attention_bounds


def _qkv(b, h, n, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_reference_matches_float64_formula():
    q, k, v = _qkv(2, 3, 65, 16, dtype=torch.float64)
    expect = torch.softmax(q @ k.transpose(-1, -2) * 0.1, -1) @ v
    torch.testing.assert_close(reference_attention(q, k, v, 0.1), expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 65, 197])
@pytest.mark.parametrize("scale", [0.1, 16 ** -0.5])
def test_sdpa_and_reference_float32_within_the_error_model(n, scale):
    # Both float32 paths against float64 truth, each element within the bound of tests/error_model.py.
    q, k, v = (t.detach() for t in _qkv(2, 3, n, 16))
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))
    rounded = [t.double() for t in (q, k, v, g)]
    bounds = attention_bounds(*rounded[:3], scale, rounded[3], torch.float32)

    def run(fn, q, k, v, g):
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = fn(q, k, v)
        return (out, *torch.autograd.grad(out, (q, k, v), g))
    truth = run(lambda a, b, c: torch.softmax(a @ b.transpose(-1, -2) * scale, -1) @ c, *rounded)
    for backend in ("reference", "sdpa"):
        got = run(lambda a, b, c: attention(a, b, c, scale, backend), q, k, v, g)
        for name, x, t, b in zip(("out", "dq", "dk", "dv"), got, truth, bounds):
            assert_within(f"{backend} {name}", x, t, b)


def test_the_error_model_catches_a_small_error():
    # The bound is not vacuous: a 1e-3 relative slip in the output (far smaller than any indexing or scale bug)
    # exceeds it.
    q, k, v = (t.detach() for t in _qkv(2, 3, 65, 16))
    g = torch.randn(q.shape)
    bounds = attention_bounds(q.double(), k.double(), v.double(), 0.25, g.double(), torch.float32)
    truth = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.25, -1) @ v.double()
    with pytest.raises(AssertionError, match="exceeds its bound"):
        assert_within("out", truth * (1 + 1e-3), truth, bounds[0])


def test_shared_map_equals_per_sample_map():
    q, k, _ = _qkv(1, 2, 35, 8)
    v = torch.randn(5, 2, 35, 12)
    for backend in ("reference", "sdpa"):
        out = attention(q, k, v, 0.3, backend)
        expect = reference_attention(q.expand(5, -1, -1, -1), k.expand(5, -1, -1, -1), v, 0.3)
        torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("mode", ["I", "II", "III"])
def test_module_backends_agree_with_grads(mode, backend):
    torch.manual_seed(0)
    layer = ImpulseAttention(32, num_heads=2, head_dim=16, grid_size=(5, 13), mode=mode, kernel_size=3,
                             attention_backend="reference").double()
    x = torch.randn(3, 65, 32, requires_grad=True, dtype=torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]
    assert params

    def run():
        out = layer(x)
        return (out, *torch.autograd.grad(out.square().sum(), [x, *params]))
    ref = run()
    layer.attention_backend = backend
    ours = run()
    # float64 on both sides: the two backends differ only by rounding (eps64 ~ 1e-16 times a size factor)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mode2_map_is_the_fitted_map():
    layer = ImpulseAttention(64, num_heads=4, head_dim=16, grid_size=8, mode="II", kernel_size=3, seed=3)
    fit = layer.fit_results[0]
    x = layer.qk_request().pseudo_input.double()
    expect = attention_maps(x, fit.q[0].double(), fit.k[0].double(), fit.scale)
    maps = layer.attention_map(torch.randn(2, 64, 64))
    assert maps.shape == (2, 4, 64, 64)
    torch.testing.assert_close(maps[0].double(), expect.reshape(4, 64, 64), rtol=1e-4, atol=1e-5)
    # the map is input-independent and argmax hits the target on every valid row
    torch.testing.assert_close(layer.attention_map(None), maps[:1])
    torch.testing.assert_close(maps[1], maps[0])
    assert fit.report.argmax_hit == 1.0


def test_mode1_alpha0_map_is_fitted_map_and_alpha_changes_it():
    layer = ImpulseAttention(64, num_heads=2, head_dim=16, grid_size=8, mode="I", alpha=0.0, kernel_size=3)
    x = torch.randn(2, 64, 64)
    m0 = layer.attention_map(x)
    torch.testing.assert_close(m0[0], m0[1])  # α = 0: purely positional
    layer.alpha = 0.3
    m1 = layer.attention_map(x)
    assert not torch.allclose(m1[0], m1[1])


@pytest.mark.parametrize("b,h,n", [(1, 1, 65), (2, 1, 197), (1, 3, 35)])
def test_shapes_odd_sizes(b, h, n):
    grid = {65: (5, 13), 197: (1, 197), 35: (5, 7)}[n]
    for mode in ("I", "II", "III"):
        layer = ImpulseAttention(16, num_heads=h, head_dim=8, grid_size=grid, mode=mode, kernel_size=3,
                                 init="random")
        assert layer(torch.randn(b, n, 16)).shape == (b, n, 16)
    assert ViTAttention(16, num_heads=h, head_dim=8, grid_size=grid)(torch.randn(b, n, 16)).shape == (b, n, 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_module_dtypes(dtype):
    layer = ImpulseAttention(32, num_heads=2, head_dim=16, grid_size=4, kernel_size=3,
                             attention_backend="reference")
    layer = layer.to(dtype)
    out = layer(torch.randn(2, 16, 32, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="IV"), "mode"),
    (dict(init="xavier"), "init"),
    (dict(attention_backend="cuda"), "attention_backend"),
    (dict(kernel_size=2), "kernel_size"),
    (dict(dim=30), "dim"),
    (dict(alpha=1.5), "alpha"),
    (dict(grid_size=(0, 3)), "grid_size"),
])
def test_module_bad_args(kwargs, match):
    args = dict(dim=32, num_heads=2, head_dim=16, grid_size=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        ImpulseAttention(**args)


def test_module_rejects_wrong_token_count():
    layer = ImpulseAttention(32, num_heads=2, head_dim=16, grid_size=4, kernel_size=3)
    with pytest.raises(ValueError, match="N=16"):
        layer(torch.randn(2, 15, 32))


def test_attention_bad_inputs():
    q, k, v = _qkv(1, 2, 5, 8)
    with pytest.raises(ValueError, match="q and k"):
        attention(q, k[:, :, :4], v, 0.1)
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k.double(), v, 0.1)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, 0.1, "flash")
