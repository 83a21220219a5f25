"""The public Python API answers bad input with one clear error that names the argument, before any work: absurd
numeric ranges, fits that end non-finite, strings (or ints) passed as booleans, seeds and keyword dicts of the
wrong type, sizes that would not fit in memory or take too long, and inputs of the wrong dtype or kind."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import impulse_attn
from impulse_attn import (ConvMixer, ImpulseAttention, SimpleViT, ViTAttention, attention_maps, filter_bank,
                          fit_impulse, init_, initialize_qk_)
from impulse_attn.fitting import api as fit_api
from impulse_attn.fitting import closed_form

from conftest import single_thread

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TINY_FIT = dict(num_heads=2, grid_size=(4, 4), kernel_size=3, dim=16, head_dim=4)


@pytest.fixture(autouse=True)
def _small_budget(monkeypatch):
    # Sizes that would not fit are refused by the package's own check, not by the allocator, on any machine.
    monkeypatch.setenv("IMPULSE_ATTN_MEMORY_BUDGET", str(2 * 2 ** 30))
    with single_thread():
        yield


def _tiny_vit(**kw):
    return SimpleViT(8, 2, num_classes=3, dim=16, depth=1, num_heads=2, head_dim=4, mlp_dim=8, kernel_size=3, **kw)


# --- 1. absurd numeric ranges are refused up front; a fit that ends non-finite raises -----------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(fit_method="closed_form", scale=1e-300), "scale"),
    (dict(fit_method="closed_form", scale=1e300), "scale"),
    (dict(fit_method="closed_form", logit_scale=1e308), "logit_scale"),
    (dict(fit_method="closed_form", noise_std=1e300), "noise_std"),
    (dict(fit_method="iterative", steps=3, lr=1e30, backend="reference"), "lr"),
    (dict(fit_method="iterative", steps=3, lr=1e30), "lr"),
])
def test_absurd_ranges_are_refused_before_the_fit(monkeypatch, kwargs, needle):
    def never(*a, **k):
        raise AssertionError("the fit ran")
    monkeypatch.setattr(fit_api, "_Problem", never)
    with pytest.raises(ValueError, match=rf"^{needle} must be"):
        fit_impulse(**TINY_FIT, **kwargs)


def test_ordinary_extremes_are_still_accepted():
    # the official code's target logit (1000) and noise scale, a large Adam rate, a small scale
    r = fit_impulse(**TINY_FIT, fit_method="closed_form", logit_scale=1000.0, noise_std=3.0, warn=False)
    assert torch.isfinite(r.q).all() and torch.isfinite(r.k).all()
    r = fit_impulse(**TINY_FIT, steps=3, lr=1.0, scale=1e-4, backend="reference", warn=False)
    assert torch.isfinite(r.q).all()


def test_a_fit_that_ends_non_finite_raises_naming_the_likely_argument():
    # every argument in range, but a pseudo-input of magnitude 1e20 overflows float32 logits
    from impulse_attn import sincos_2d
    x = 1e20 * sincos_2d((4, 4), 16)
    with pytest.raises(ValueError, match=r"non-finite.*pseudo_input"):
        fit_impulse(**TINY_FIT, steps=3, backend="reference", pseudo_input=x, warn=False)


def test_a_non_finite_result_is_not_cached(monkeypatch, tmp_path):
    real = fit_api.RUNNERS["closed_form"]

    def nan_runner(spec, p, backend, progress):
        q, k, extra, steps = real(spec, p, backend, progress)
        return q * float("nan"), k, extra, steps
    monkeypatch.setitem(fit_api.RUNNERS, "closed_form", nan_runner)
    with pytest.raises(ValueError, match=r"non-finite Q, K"):
        fit_impulse(**TINY_FIT, fit_method="closed_form", cache_dir=tmp_path, logit_scale=2.0)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# --- 2. booleans must be bools ----------------------------------------------------------------------------------
BOOL_CALLS = {
    "ImpulseAttention.defer_init": lambda v: ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, init="random",
                                                              defer_init=v),
    "ImpulseAttention.prenorm": lambda v: ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, init="random",
                                                           prenorm=v),
    "ViTAttention.prenorm": lambda v: ViTAttention(16, 2, 4, (4, 4), prenorm=v),
    "ViTAttention.defer_init": lambda v: ViTAttention(16, 2, 4, (4, 4), defer_init=v),
    "ConvMixer.freeze": lambda v: ConvMixer(8, 2, dim=8, depth=1, filters="impulse", freeze=v),
    "fit_impulse.warn": lambda v: fit_impulse(**TINY_FIT, fit_method="closed_form", warn=v),
    "fit_impulse.progress": lambda v: fit_impulse(**TINY_FIT, fit_method="closed_form", progress=v),
    "fit_impulse.dedup": lambda v: fit_impulse(**TINY_FIT, steps=2, backend="reference", dedup=v, warn=False),
}


@pytest.mark.parametrize("call", sorted(BOOL_CALLS))
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, 1.0])
def test_strings_and_ints_are_not_booleans(call, value):
    name = call.split(".")[1]
    with pytest.raises(TypeError, match=rf"^{name} must be a bool"):
        BOOL_CALLS[call](value)


@pytest.mark.parametrize("call", sorted(BOOL_CALLS))
def test_numpy_booleans_are_booleans(call):
    BOOL_CALLS[call](np.bool_(False))
    BOOL_CALLS[call](np.True_)


def test_defer_init_string_does_not_skip_the_init():
    with pytest.raises(TypeError, match="defer_init"):
        ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, defer_init="no")
    layer = ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, defer_init=np.False_, fit_kwargs={"target_mass": 0.5})
    assert layer.fit_results is not None


def test_timm_bool_keywords():
    timm = pytest.importorskip("timm")
    import impulse_attn.timm as iat
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              embed_dim=32, num_heads=2, num_classes=3)
    with pytest.raises(TypeError, match="^vproj must be a bool"):
        iat.init_(model, "mimetic", vproj="no")
    iat.init_(model, "mimetic", vproj=np.False_)


# --- 3. seeds, keyword dicts, memory, dtypes --------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda s: _tiny_vit(seed=s),
    lambda s: ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, seed=s),
    lambda s: ConvMixer(8, 2, dim=8, depth=1, filters="impulse", seed=s),
    lambda s: fit_impulse(**TINY_FIT, fit_method="closed_form", seed=s),
    lambda s: init_(_tiny_vit(init="default"), "random", seed=s),
    lambda s: initialize_qk_([ViTAttention(16, 2, 4, (4, 4))], "random", seed=s),
    lambda s: filter_bank("impulse", 4, seed=s),
], ids=["SimpleViT", "ImpulseAttention", "ConvMixer", "fit_impulse", "init_", "initialize_qk_", "filter_bank"])
def test_seeds(make):
    for bad in (1.5, "1", True, None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="^seed must be an int"):
            make(bad)
    for bad in (-1, 2 ** 63, 2 ** 70):
        with pytest.raises(ValueError, match=r"^seed must be in \[0, 2\*\*63 - 1\]"):
            make(bad)
    make(np.int64(1))
    make(np.uint8(3))


@pytest.mark.parametrize("make", [
    lambda fk: init_(_tiny_vit(init="default"), "impulse", fit_kwargs=fk),
    lambda fk: _tiny_vit(fit_kwargs=fk),
    lambda fk: ImpulseAttention(16, 2, 4, (4, 4), kernel_size=3, fit_kwargs=fk),
    lambda fk: initialize_qk_([ViTAttention(16, 2, 4, (4, 4))], "impulse", fit_kwargs=fk),
], ids=["init_", "SimpleViT", "ImpulseAttention", "initialize_qk_"])
def test_fit_kwargs_must_be_a_dict_of_names(make):
    for bad in ("str", [("steps", 1)], 3, {1: 2}):
        with pytest.raises(TypeError, match="^fit_kwargs must be a dict"):
            make(bad)
    make({"target_mass": 0.5})


@pytest.mark.parametrize("sizes", [dict(dim=2 ** 40), dict(head_dim=2 ** 40), dict(num_heads=2 ** 30),
                                   dict(layers=2 ** 30)])
@pytest.mark.parametrize("fit_method", ["closed_form", "iterative"])
def test_fit_memory_check_counts_every_size(monkeypatch, sizes, fit_method):
    def never(*a, **k):
        raise AssertionError("the fit ran")
    monkeypatch.setattr(fit_api, "_Problem", never)
    kw = {**TINY_FIT, **sizes}
    with pytest.raises(ValueError, match="GiB"):
        fit_impulse(kw.pop("num_heads"), fit_method=fit_method, steps=1, **kw)


class _Model(torch.nn.Module):
    pass


@pytest.mark.parametrize("name", ["SimpleViT", "ImpulseAttention", "ViTAttention", "ConvMixer"])
def test_input_dtype_and_kind(name):
    if name == "SimpleViT":
        m, x = _tiny_vit(init="random"), torch.randn(2, 3, 8, 8)
    elif name == "ConvMixer":
        m, x = ConvMixer(8, 2, dim=8, depth=1), torch.randn(2, 3, 8, 8)
    else:
        cls = ImpulseAttention if name == "ImpulseAttention" else ViTAttention
        m, x = cls(16, 2, 4, (4, 4), kernel_size=3, init="random"), torch.randn(2, 16, 16)
    with pytest.raises(TypeError, match=r"float64.*float32"):
        m(x.double())
    with pytest.raises(TypeError, match="floating"):
        m(x.long())
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        m(x.tolist())
    m.double()
    assert m(x.double()).dtype == torch.float64
    m.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
        m(x.bfloat16())


def test_attention_maps_input_dtype():
    m = _tiny_vit(init="random")
    with pytest.raises(TypeError, match=r"float64.*float32"):
        attention_maps(m, torch.randn(1, 3, 8, 8, dtype=torch.float64))


# --- 4. closed-form size limit ----------------------------------------------------------------------------------
def test_mode_III_on_a_large_grid_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("IMPULSE_ATTN_MEMORY_BUDGET", str(64 * 2 ** 30))  # the memory check passes; nothing big is made
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"closed form.*limit.*iterative"):
        ImpulseAttention(16, 8, 4, grid_size=(64, 64), mode="III")
    assert time.perf_counter() - t0 < 10


def test_closed_form_per_head_limit_uses_the_kept_rank(monkeypatch):
    # 16 tokens, identity pseudo-input: every head takes an SVD of a 16 x 16 matrix
    monkeypatch.setattr(closed_form, "MAX_CLOSED_FORM_WORK", 3 * 16 ** 3)
    with pytest.raises(ValueError, match=r"4 SVDs of 16 x 16.*MAX_CLOSED_FORM_WORK"):
        fit_impulse(4, (4, 4), 3, 16, 4, fit_method="closed_form", pseudo_input=torch.eye(16))
    # the sin-cos pseudo-input keeps a lower rank: the same sizes pass
    fit_impulse(2, (4, 4), 3, 16, 4, fit_method="closed_form", warn=False)


def test_closed_form_projector_limit_is_checked_first(monkeypatch):
    monkeypatch.setattr(closed_form, "MAX_CLOSED_FORM_WORK", 15 ** 3)

    def never(*a, **k):
        raise AssertionError("the fit ran")
    monkeypatch.setattr(fit_api, "_Problem", never)
    with pytest.raises(ValueError, match=r"16 x 16 pseudo-input"):
        fit_impulse(1, (4, 4), 3, 16, 4, fit_method="closed_form", pseudo_input=torch.eye(16))


# --- 5. a sweep of the public API with hypothesis ---------------------------------------------------------------
weird_int = st.one_of(st.integers(-2, 6), st.sampled_from([0, 2 ** 40]), st.floats(-1, 4), st.booleans(),
                      st.none(), st.just("3"), st.sampled_from([np.int64(2), np.int32(4)]))
weird_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-300, 1e300]),
                        st.just("0.1"), st.booleans(), st.none())
weird_bool = st.one_of(st.booleans(), st.sampled_from([np.True_, np.False_]), st.just("no"), st.integers(0, 1),
                       st.none())
VALID = {"fit": 0, "layer": 0}
# Each example is valid, or valid but for one argument replaced by a weird value: most examples then reach the
# code that runs (counted in VALID), and every argument is also tried wrong on its own.
FIT_ARGS = {"num_heads": (st.integers(1, 3), weird_int), "dim": (st.sampled_from([8, 16]), weird_int),
            "head_dim": (st.sampled_from([2, 4]), weird_int), "seed": (st.integers(0, 3), weird_int),
            "steps": (st.integers(0, 3), weird_int), "scale": (st.sampled_from([0.1, 1.0, "auto"]), weird_float),
            "lr": (st.sampled_from([1e-3, 1e-1]), weird_float), "warn": (st.booleans(), weird_bool),
            "target_mass": (st.floats(0.05, 0.9), weird_float), "noise_std": (st.sampled_from([0.0, 0.5]), weird_float),
            "grid_size": (st.sampled_from([(3, 3), (2, 4)]), weird_int)}
LAYER_ARGS = {"prenorm": (st.booleans(), weird_bool), "defer_init": (st.booleans(), weird_bool),
              "seed": (st.integers(0, 3), weird_int), "dropout": (st.sampled_from([0.0, 0.1]), weird_float),
              "fit_kwargs": (st.sampled_from([None, {"target_mass": 0.2}]), st.sampled_from(["x", [1], {2: 3}])),
              "num_heads": (st.integers(1, 3), weird_int), "alpha": (st.floats(0, 0.9), weird_float),
              "mode": (st.sampled_from(["I", "II", "III"]), st.sampled_from(["IV", 1, None]))}


def _draw(data, args):
    wrong = data.draw(st.one_of(st.none(), st.sampled_from(sorted(args))), label="wrong")
    return {name: data.draw(bad if name == wrong else good, label=name) for name, (good, bad) in args.items()}, wrong


@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), fit_method=st.sampled_from(["closed_form", "iterative"]))
def _fit_sweep(data, fit_method):
    kw, wrong = _draw(data, FIT_ARGS)
    try:
        r = fit_impulse(kernel_size=3, fit_method=fit_method, backend="reference", **kw)
    except (ValueError, TypeError):
        return
    VALID["fit"] += wrong is None
    assert torch.isfinite(r.q).all() and torch.isfinite(r.k).all()
    assert r.q.shape[:2] == (1, r.offsets.shape[1]) and r.q.shape == r.k.shape


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), x_dtype=st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]))
def _layer_sweep(data, x_dtype):
    kw, wrong = _draw(data, LAYER_ARGS)
    try:
        layer = ImpulseAttention(16, head_dim=4, grid_size=(3, 3), kernel_size=3, **kw)
    except (ValueError, TypeError):
        return
    assert isinstance(kw["prenorm"], (bool, np.bool_)) and isinstance(kw["defer_init"], (bool, np.bool_))
    assert (layer.fit_results is None) == bool(kw["defer_init"])
    try:
        out = layer(torch.ones(2, 9, 16, dtype=x_dtype))
    except TypeError:
        assert x_dtype != torch.float32
        return
    VALID["layer"] += wrong is None
    assert out.shape == (2, 9, 16) and torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore:impulse fit is no better:RuntimeWarning")
@pytest.mark.parametrize("sweep, key", [(_fit_sweep, "fit"), (_layer_sweep, "layer")])
def test_sweep(sweep, key):
    VALID[key] = 0
    sweep()
    # a sweep whose every example is refused tests nothing
    assert VALID[key] >= 5, VALID


def test_public_exports_are_covered():
    covered = {"init_", "attention_maps", "family_of", "InitReport", "ImpulseAttention", "ViTAttention", "SimpleViT",
               "ConvMixer", "fit_impulse", "FitSpec", "FitResult", "FitReport", "INIT_STRATEGIES", "initialize_qk_",
               "filter_bank", "conv_as_attention", "bank_report", "sincos_2d", "impulse_targets", "draw_offsets",
               "backends", "__version__"}
    assert set(impulse_attn.__all__) <= covered, set(impulse_attn.__all__) - covered


@pytest.mark.parametrize("call, exc, needle", [
    (lambda: impulse_attn.family_of("vit"), TypeError, "no init family"),
    (lambda: impulse_attn.draw_offsets(2, 3, seed=1.5), TypeError, "seed must be an int"),
    (lambda: impulse_attn.draw_offsets(2, 3, seed=-1), ValueError, "seed must be in"),
    (lambda: impulse_attn.draw_offsets(2, 3, generator="g"), TypeError, "generator must be a torch.Generator"),
    (lambda: filter_bank("impulse", 4, generator=1), TypeError, "generator must be a torch.Generator"),
    (lambda: impulse_attn.sincos_2d((2, 2), 8, dtype=torch.int64), TypeError, "dtype must be a floating"),
    (lambda: impulse_attn.sincos_2d((2, 2), 8, dtype="float32"), TypeError, "dtype must be a floating"),
    (lambda: filter_bank("impulse", 4, dtype=torch.int32), TypeError, "dtype must be a floating"),
    (lambda: impulse_attn.impulse_targets([[0, 1]], (2, 2), dtype="x"), TypeError, "dtype must be"),
    (lambda: impulse_attn.conv_as_attention(torch.ones(3, 3, dtype=torch.long), 4), TypeError, "floating"),
    (lambda: impulse_attn.bank_report(torch.ones(2, 3, 3), tol=float("nan")), ValueError, "tol must be"),
    (lambda: impulse_attn.conv_as_attention(torch.full((3, 3), float("nan")), 4), ValueError, "NaN"),
    (lambda: impulse_attn.bank_report(torch.full((2, 3, 3), float("inf"))), ValueError, "NaN"),
    (lambda: fit_impulse(**TINY_FIT, pseudo_input=torch.ones(16, 16, dtype=torch.long)), TypeError, "floating"),
    (lambda: init_(_tiny_vit(), "impulse", kernel_size=4), ValueError, "kernel_size must be odd"),
    (lambda: init_(_tiny_vit(), "impulse", kernel_size=3.0), TypeError, "kernel_size must be an int"),
    (lambda: init_(_tiny_vit(), "impulse", fit_method="exact"), ValueError, "fit_method must be one of"),
    (lambda: init_(_tiny_vit(), 3), ValueError, "init must be one of"),
    (lambda: attention_maps(_tiny_vit(), torch.randn(1, 3, 4, 4)), ValueError, "must have shape"),
    (lambda: filter_bank("random", 2 ** 40), ValueError, "GiB"),
    (lambda: impulse_attn.conv_as_attention(torch.ones(3, 3), 2 ** 12), ValueError, "GiB"),
    (lambda: impulse_attn.impulse_targets([[0, 1]], 2 ** 12), ValueError, "GiB"),
    (lambda: impulse_attn.sincos_2d(2 ** 16, 2 ** 16), ValueError, "GiB"),
    (lambda: impulse_attn.draw_offsets(2 ** 40, 3), ValueError, "GiB"),
])
def test_other_public_entry_points(call, exc, needle):
    with pytest.raises(exc, match=needle):
        call()


def test_window_and_token_mixing_options_are_numbers():
    pytest.importorskip("timm")
    from timm.models.mlp_mixer import MlpMixer
    from timm.models.swin_transformer import SwinTransformer
    swin = SwinTransformer(img_size=56, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3)
    mixer = MlpMixer(img_size=32, patch_size=8, num_blocks=1, embed_dim=16, num_classes=3)
    for bad in ("x", None, [0.5]):
        with pytest.raises(TypeError, match="^window_mass must be a number"):
            init_(swin, "impulse", window_mass=bad)
        with pytest.raises(TypeError, match="^gain must be a number"):
            init_(mixer, "impulse", gain=bad)
    with pytest.raises(ValueError, match="^gain must be a finite number > 0"):
        init_(mixer, "impulse", gain=float("inf"))
    init_(swin, "impulse", window_mass=np.float32(0.5))
    init_(mixer, "impulse", gain=np.float64(1.5))
