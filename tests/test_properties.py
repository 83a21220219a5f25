"""Property tests: whatever a user passes to the public constructors, ops and the command line, the answer is a
result of the right shape or a clear ValueError/TypeError (exit status 2 on the command line), never another
exception or a traceback."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from impulse_attn import ConvMixer, ImpulseAttention, SimpleViT, ViTAttention, cli, fit_impulse
from impulse_attn.attention import attention

# A small memory budget: sizes that would not fit are refused by the package's own check, not by the allocator.
BUDGET = str(2 * 2 ** 30)
SETTINGS = dict(deadline=None, derandomize=True,  # the same examples on every machine: CI is reproducible
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

odd = st.sampled_from([1, 3, 5])
weird_int = st.one_of(st.integers(-3, 6), st.sampled_from([0, 10 ** 6, 2 ** 40]), st.floats(-2, 5),
                      st.booleans(), st.none(), st.just("3"))
weird_float = st.one_of(st.floats(-1, 2), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
                        st.integers(-1, 2), st.just("x"))


@pytest.fixture(autouse=True)
def _small_budget(monkeypatch):
    monkeypatch.setenv("IMPULSE_ATTN_MEMORY_BUDGET", BUDGET)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@settings(max_examples=40, **SETTINGS)
@given(dim=st.one_of(st.sampled_from([8, 12, 16]), weird_int), heads=st.one_of(st.integers(1, 3), weird_int),
       head_dim=st.one_of(st.sampled_from([4, 8]), weird_int),
       grid=st.one_of(st.tuples(st.integers(1, 5), st.integers(1, 5)), weird_int),
       mode=st.sampled_from(["I", "II", "III", "IV", 1]), alpha=st.one_of(st.floats(0, 1), weird_float),
       init=st.sampled_from(["impulse", "mimetic", "random", "default", "he"]),
       kernel=st.one_of(odd, weird_int), batch=st.integers(0, 3))
def test_impulse_attention_constructor_and_forward(dim, heads, head_dim, grid, mode, alpha, init, kernel, batch):
    try:
        layer = ImpulseAttention(dim, num_heads=heads, head_dim=head_dim, grid_size=grid, mode=mode, alpha=alpha,
                                 init=init, kernel_size=kernel)
    except (ValueError, TypeError):
        return
    n = layer.grid_size[0] * layer.grid_size[1]
    out = layer(torch.randn(batch, n, layer.dim))
    assert out.shape == (batch, n, layer.dim) and torch.isfinite(out).all()


@settings(max_examples=20, **SETTINGS)
@given(dim=st.one_of(st.sampled_from([8, 16]), weird_int), grid=st.one_of(st.integers(1, 4), weird_int),
       init=st.sampled_from(["impulse", "mimetic", "default"]), batch=st.integers(0, 2))
def test_vit_attention_constructor_and_forward(dim, grid, init, batch):
    try:
        layer = ViTAttention(dim, num_heads=2, head_dim=4, grid_size=grid, init=init, kernel_size=3)
    except (ValueError, TypeError):
        return
    n = layer.grid_size[0] * layer.grid_size[1]
    if n * layer.dim > 10 ** 7:
        return  # a valid layer for a grid whose input alone would not fit in memory: nothing to run
    assert layer(torch.randn(batch, n, layer.dim)).shape == (batch, n, layer.dim)


@settings(max_examples=30, **SETTINGS)
@given(image=st.one_of(st.sampled_from([8, (8, 12), 12]), weird_int),
       patch=st.one_of(st.sampled_from([2, 4, (2, 4)]), weird_int), dim=st.one_of(st.sampled_from([8, 16]), weird_int),
       depth=st.one_of(st.integers(1, 2), weird_int), classes=st.one_of(st.integers(1, 4), weird_int),
       attention_kind=st.sampled_from(["impulse", "plain", "none"]), batch=st.integers(0, 2))
def test_simple_vit_constructor_and_forward(image, patch, dim, depth, classes, attention_kind, batch):
    try:
        model = SimpleViT(image_size=image, patch_size=patch, num_classes=classes, dim=dim, depth=depth,
                          num_heads=2, head_dim=4, mlp_dim=8, attention=attention_kind, kernel_size=3)
    except (ValueError, TypeError):
        return
    h, w = model.image_size
    assert model(torch.randn(batch, 3, h, w)).shape == (batch, classes)


@settings(max_examples=20, **SETTINGS)
@given(image=st.one_of(st.sampled_from([8, 12]), weird_int), patch=st.one_of(st.sampled_from([2, 4]), weird_int),
       dim=st.one_of(st.sampled_from([4, 8]), weird_int), kernel=st.one_of(odd, weird_int),
       filters=st.sampled_from(["learned", "random", "impulse", "box", "gaussian", "softmax", "x"]),
       freeze=st.booleans(), batch=st.integers(0, 2))
def test_convmixer_constructor_and_forward(image, patch, dim, kernel, filters, freeze, batch):
    try:
        model = ConvMixer(image_size=image, patch_size=patch, num_classes=3, dim=dim, depth=1, kernel_size=kernel,
                          filters=filters, freeze=freeze)
    except (ValueError, TypeError):
        return
    model.eval()  # BatchNorm in training mode needs more than one value per channel
    h, w = model.image_size
    assert model(torch.randn(batch, 3, h, w)).shape == (batch, 3)


@settings(max_examples=40, **SETTINGS)
@given(heads=st.one_of(st.integers(1, 3), weird_int), grid=st.one_of(st.integers(1, 5), weird_int),
       kernel=st.one_of(odd, weird_int), dim=st.one_of(st.sampled_from([8, 16]), weird_int),
       head_dim=st.one_of(st.integers(1, 8), weird_int), method=st.sampled_from(["closed_form", "iterative", "x"]),
       scale=st.one_of(st.sampled_from([0.1, "auto"]), weird_float), target_mass=st.one_of(st.just(0.3), weird_float),
       pinv=st.one_of(st.just(0.03), weird_float), noise=st.one_of(st.just(0.0), weird_float),
       logit_scale=st.one_of(st.none(), weird_float), renorm_every=st.one_of(st.just(5), weird_int),
       layers=st.one_of(st.integers(1, 2), weird_int))
def test_fit_impulse_answers_or_refuses(heads, grid, kernel, dim, head_dim, method, scale, target_mass, pinv, noise,
                                        logit_scale, renorm_every, layers):
    try:
        res = fit_impulse(heads, grid, kernel, dim, head_dim, method=method, steps=3, scale=scale,
                          target_mass=target_mass, pinv_rtol=pinv, noise_std=noise, logit_scale=logit_scale,
                          renorm_every=renorm_every, layers=layers, warn=False)
    except (ValueError, TypeError):
        return
    assert res.q.shape == (layers, heads, dim, head_dim) and res.offsets.shape == (layers, heads, 2)
    assert torch.isfinite(res.q).all() and torch.isfinite(res.k).all()
    assert math.isfinite(res.report.mse)


@settings(max_examples=30, **SETTINGS)
@given(b=st.integers(0, 2), h=st.integers(1, 2), n=st.integers(1, 9), d=st.integers(1, 8),
       shared=st.booleans(), backend=st.sampled_from(["auto", "reference", "sdpa", "flash"]),
       scale=st.floats(-2, 2, allow_nan=False))
def test_attention_op(b, h, n, d, shared, backend, scale):
    q = torch.randn(1 if shared else b, h, n, d)
    v = torch.randn(b, h, n, d + 1)
    try:
        out = attention(q, q, v, scale, backend)
    except ValueError:
        assert backend == "flash"
        return
    assert out.shape == (b, h, n, d + 1)


# --- the command line ---------------------------------------------------------------------------------------------
TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "2",
        "--image-size", "8", "--patch-size", "2", "--dim", "16", "--depth", "1", "--num-heads", "2", "--head-dim",
        "4", "--mlp-dim", "8", "--kernel-size", "3", "--epochs", "1", "--batch-size", "8", "--no-progress"]
VALUES = st.sampled_from(["0", "1", "-1", "3", "2.5", "nan", "inf", "-inf", "1e30", str(2 ** 70), "", "x", "auto",
                          "none", ",", "0,1", "8,8", "I", "impulse", "laplace", "cpu", "cuda", "sdpa", "triton",
                          "adamw", "paper", "flip-crop", "folder", "timm:vit_tiny_patch16_224"])
TRAIN_FLAGS = ["--dataset", "--data-dir", "--per-class", "--data-seed", "--augment", "--crop-scale", "--image-size",
               "--synthetic-train", "--synthetic-classes", "--model", "--patch-size", "--grid", "--dim", "--depth",
               "--num-heads", "--head-dim", "--mlp-dim", "--attention", "--mode", "--alpha", "--init",
               "--kernel-size", "--scale", "--fit-method", "--fit-target", "--fit-steps", "--target-mass",
               "--attention-backend", "--filters", "--box-n", "--epochs", "--steps", "--batch-size", "--optimizer",
               "--lr", "--weight-decay", "--warmup-epochs", "--min-lr", "--clip-grad", "--amp", "--seed",
               "--eval-every", "--device", "--num-workers"]
FIT_FLAGS = ["--num-heads", "--grid", "--kernel-size", "--dim", "--head-dim", "--fit-method", "--fit-steps",
             "--fit-target", "--fit-backend", "--scale", "--alpha", "--target-mass", "--layers", "--seed"]


def _main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@settings(max_examples=40, **SETTINGS)
@given(flags=st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), VALUES), max_size=3))
def test_train_argv_exits_0_or_2(tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", *TINY, "--out", str(out / "r")]
    for flag, value in flags:
        if flag == "--num-workers" and value not in ("0", "-1", "x"):
            value = "0"  # worker processes would only slow the test down
        if flag in ("--epochs", "--steps", "--synthetic-train", "--eval-every") and value in ("1e30", str(2 ** 70)):
            value = "2"  # a valid but endless run is not what this test is about
        argv += [flag, value]
    code, err = _main(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err


@settings(max_examples=30, **SETTINGS)
@given(flags=st.lists(st.tuples(st.sampled_from(FIT_FLAGS), VALUES), max_size=3))
def test_fit_argv_exits_0_or_2(tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("fit")
    argv = ["fit", "--num-heads", "2", "--grid", "4", "--kernel-size", "3", "--dim", "16", "--head-dim", "4",
            "--fit-steps", "3", "--out", str(out / "f"), "--no-progress"]
    for flag, value in flags:
        if flag == "--fit-steps" and value in ("1e30", str(2 ** 70)):
            value = "5"
        argv += [flag, value]
    code, err = _main(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
