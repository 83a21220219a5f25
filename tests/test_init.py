import math

import pytest
import torch

from impulse_attn.targets import sincos_2d

from impulse_attn import ImpulseAttention, SimpleViT, ViTAttention
from impulse_attn.init import mimetic_qk, random_qk


def test_mimetic_full_rank_reproduces_published_matrix():
    d = 64
    q, k = mimetic_qk(3, d, d, torch.Generator().manual_seed(0))
    w = (q.double() @ k.double().transpose(1, 2))
    diag = torch.diagonal(w, dim1=1, dim2=2)
    off = w - torch.diag_embed(diag)
    # W = 0.7·sqrt(1/D)·U(−1, 1) + 0.7·I: the diagonal is 0.7 plus noise, off-diagonal noise has std
    # 0.7·sqrt(1/D)/sqrt(3) (the std of U(−1, 1) is 1/sqrt(3)).
    noise_std = 0.7 * math.sqrt(1 / d) / math.sqrt(3)
    assert float(diag.mean()) == pytest.approx(0.7, abs=4 * noise_std / math.sqrt(3 * d))
    n_off = 3 * d * (d - 1)
    assert float(off.sum() / n_off) == pytest.approx(0.0, abs=4 * noise_std / math.sqrt(n_off))
    std = float(off.pow(2).sum().div(n_off).sqrt())
    assert std == pytest.approx(noise_std, rel=0.05)


def test_mimetic_low_rank_is_best_rank_r_approximation():
    d, r = 32, 8
    g = torch.Generator().manual_seed(1)
    q, k = mimetic_qk(1, d, r, g)
    # redraw the same W to compare against its truncated SVD
    g = torch.Generator().manual_seed(1)
    noise = 2 * torch.rand(1, d, d, generator=g, dtype=torch.float64) - 1
    w = 0.7 * math.sqrt(1 / d) * noise + 0.7 * torch.eye(d, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w)
    best = (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]
    torch.testing.assert_close(q.double() @ k.double().transpose(1, 2), best, rtol=1e-5, atol=1e-5)


def test_random_bounds():
    q, k = random_qk(2, 100, 8, torch.Generator().manual_seed(0))
    assert q.abs().max() <= 0.1 and k.abs().max() <= 0.1
    assert q.abs().max() > 0.09


def test_init_writes_projection_weights():
    layer = ImpulseAttention(32, num_heads=2, head_dim=8, grid_size=4, kernel_size=3, init="impulse")
    res = layer.fit_results[0]
    w = layer.to_qk.weight
    # head h's query for token x is x @ Q_h: rows h·r..(h+1)·r of the projection are Q_hᵀ
    torch.testing.assert_close(w[8:16].T, res.q[0, 1])
    torch.testing.assert_close(w[16 + 8:32].T, res.k[0, 1])


def test_default_init_untouched_and_strategies_differ():
    torch.manual_seed(0)
    a = ViTAttention(32, num_heads=2, head_dim=8, grid_size=4, init="default").to_qk.weight.clone()
    torch.manual_seed(0)
    b = ViTAttention(32, num_heads=2, head_dim=8, grid_size=4, init="default").to_qk.weight.clone()
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c = ViTAttention(32, num_heads=2, head_dim=8, grid_size=4, init="mimetic").to_qk.weight
    assert not torch.equal(a, c)


def test_model_fits_layers_once_with_fresh_offsets():
    m = SimpleViT(image_size=16, patch_size=2, num_classes=3, dim=64, depth=3, num_heads=4, head_dim=16, mlp_dim=32,
                  kernel_size=5, seed=0)
    assert len(m.fit_results) == 1 and m.fit_results[0].q.shape == (3, 4, 64, 16)
    offs = [layer.impulse_offsets for layer in m.attention_layers()]
    assert not all(torch.equal(offs[0], o) for o in offs[1:])
    assert m.fit_results[0].report.argmax_hit == 1.0


def test_iterative_init_uses_auto_scale_at_small_width():
    layer = ImpulseAttention(64, num_heads=4, head_dim=16, grid_size=8, kernel_size=3, mode="II",
                             fit_method="iterative", fit_kwargs=dict(steps=300, lr=1e-3))
    assert layer.scale == pytest.approx(0.1 * 512 * 16 * 4 / 64 ** 2)
    assert layer.fit_results[0].report.argmax_hit == 1.0
    assert layer.fit_results[0].scale == layer.scale


def test_scale_in_fit_kwargs_is_refused():
    with pytest.raises(ValueError, match="must not set 'scale'"):
        ImpulseAttention(32, num_heads=2, head_dim=8, grid_size=4, kernel_size=3, fit_kwargs={"scale": 0.5})
    layer = ImpulseAttention(32, num_heads=2, head_dim=8, grid_size=4, kernel_size=3, scale=0.5, mode="II")
    assert layer.fit_results[0].scale == 0.5                      # the layer's scale is the fit's scale
    assert layer.fit_results[0].report.target_mass == pytest.approx(0.1, abs=0.01)  # the model default
    maps = layer.attention_map(None)[0]
    offsets = layer.impulse_offsets
    from impulse_attn.analysis import head_stats
    stats = head_stats([maps[None]], (4, 4), 3, [offsets])
    measured = sum(s.target_mass for s in stats) / len(stats)
    assert measured == pytest.approx(0.1, abs=0.05)               # the layer's real map carries the fitted mass


def test_strategies_talk_to_layers_only_through_the_protocol():
    from impulse_attn.init import QKRequest, initialize_qk_

    class Fake:
        def __init__(self):
            self.loaded = []

        def qk_request(self, with_pseudo_input=True):
            return QKRequest(num_heads=2, dim_in=32, head_dim=8, grid_size=(4, 4),
                             pseudo_input=sincos_2d(4, 32), alpha=0.1, scale=0.1)

        def load_qk(self, q, k, offsets=None):
            self.loaded.append((q.shape, k.shape, None if offsets is None else offsets.shape))
    layers = [Fake(), Fake()]
    res = initialize_qk_(layers, "impulse", kernel_size=3)
    assert [f.loaded for f in layers] == [[((2, 32, 8), (2, 32, 8), (2, 2))]] * 2
    assert len(res) == 1 and res[0].q.shape == (2, 2, 32, 8)        # one batched fit for both layers
    assert math.isfinite(res[0].report.content_logit_std)            # alpha reached the fit
    initialize_qk_(layers, "mimetic")
    assert layers[0].loaded[-1] == ((2, 32, 8), (2, 32, 8), None)
    with pytest.raises(TypeError, match="QKLayer"):
        initialize_qk_([object()], "random")


def test_model_defaults_are_the_local_soft_closed_form_at_the_published_logit_budget():
    from impulse_attn.attention import FIT_DEFAULTS
    CLOSED_FORM_DEFAULTS = FIT_DEFAULTS["closed_form"]
    m = SimpleViT(image_size=32, patch_size=4, dim=64, depth=2, num_heads=4, head_dim=16, mlp_dim=32)
    rep = m.fit_results[0].report
    assert rep.extra["target"] == CLOSED_FORM_DEFAULTS["target"] == "laplace"
    assert rep.target_mass == pytest.approx(CLOSED_FORM_DEFAULTS["target_mass"], abs=1e-3)
    assert m.attention_layers()[0].scale == pytest.approx(0.1 * 512 * 16 * 4 / 64 ** 2)   # "auto"
    paper = ImpulseAttention(512, num_heads=8, head_dim=64, grid_size=16, mode="II")
    assert paper.scale == pytest.approx(0.1)                                               # published size
    explicit = SimpleViT(image_size=32, patch_size=4, dim=64, depth=1, num_heads=4, head_dim=16, mlp_dim=32,
                         fit_kwargs={"target": "impulse", "target_mass": 0.3})
    assert explicit.fit_results[0].report.extra["target"] == "impulse"


def test_mimetic_value_projection():
    from impulse_attn.init import mimetic_vproj
    g = torch.Generator().manual_seed(0)
    w_v, w_out = mimetic_vproj(24, 24, g)
    a = (w_out.double() @ w_v.double()).T                     # x ↦ x·A
    g = torch.Generator().manual_seed(0)
    noise = 2 * torch.rand(24, 24, generator=g, dtype=torch.float64) - 1
    expect = 0.4 * (1 / 24) ** 0.5 * noise - 0.4 * torch.eye(24, dtype=torch.float64)
    torch.testing.assert_close(a, expect, rtol=0, atol=1e-6)
    w_v, w_out = mimetic_vproj(24, 8, torch.Generator().manual_seed(0))   # inner < D: the best rank-8 part
    low = (w_out.double() @ w_v.double()).T
    s = torch.linalg.svdvals(expect)
    assert float(torch.linalg.matrix_norm(low - expect, ord=2)) == pytest.approx(float(s[8]), rel=1e-5)
    m = SimpleViT(image_size=8, patch_size=2, dim=24, depth=2, num_heads=2, head_dim=12, mlp_dim=8, kernel_size=3,
                  value_init="mimetic")
    layer = m.attention_layers()[1]
    a = (layer.to_out.weight @ layer.to_v.weight).T
    assert float(torch.diagonal(a).mean()) < -0.2                # value-then-projection ≈ −0.4·I + noise
    with pytest.raises(ValueError, match="value_init"):
        SimpleViT(image_size=8, patch_size=2, dim=24, depth=1, num_heads=2, head_dim=12, mlp_dim=8, value_init="x")


def test_cycled_offsets_use_every_window_position():
    m = SimpleViT(image_size=16, patch_size=2, dim=32, depth=2, num_heads=9, head_dim=8, mlp_dim=16, kernel_size=3,
                  fit_kwargs={"offsets": "cycle"})
    for layer in m.attention_layers():
        assert sorted(map(tuple, layer.impulse_offsets.tolist())) == [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
