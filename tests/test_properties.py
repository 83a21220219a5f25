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

from conftest import single_thread

# A small memory budget: sizes that would not fit are refused by the package's own check, not by the allocator.
BUDGET = str(2 * 2 ** 30)
SETTINGS = dict(deadline=None, derandomize=True,  # the same examples on every machine: CI is reproducible
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

odd = st.sampled_from([1, 3, 5])
weird_int = st.one_of(st.integers(-3, 6), st.sampled_from([0, 10 ** 6, 2 ** 40]), st.floats(-2, 5),
                      st.booleans(), st.none(), st.just("3"))
weird_float = st.one_of(st.floats(-1, 2), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
                        st.integers(-1, 2), st.just("x"))



def _args(valid: dict, odd: dict):
    """Keyword arguments: all valid (the first two branches), all valid but one odd, or each one valid or odd at
    random (mostly refused). Without the valid branches nearly every example would be refused."""
    names = sorted(odd)
    mixed = {k: st.one_of(v, odd[k]) if k in odd else v for k, v in valid.items()}

    def one_odd(kw):
        return st.sampled_from(names).flatmap(lambda name: odd[name].map(lambda value: {**kw, name: value}))
    return st.one_of(st.fixed_dictionaries(valid), st.fixed_dictionaries(valid),
                     st.fixed_dictionaries(valid).flatmap(one_odd),
                     st.fixed_dictionaries(mixed))


@pytest.fixture(autouse=True)
def _small_budget(monkeypatch):
    monkeypatch.setenv("IMPULSE_ATTN_MEMORY_BUDGET", BUDGET)
    with single_thread():
        yield


# Each property below counts the examples that built something and ran to the end ("valid") and those the package
# refused; a property whose examples were all (or nearly all) refused would check nothing, so each test asserts a
# floor on the valid ones (the examples are derandomized: the counts are the same on every run).
_COUNTS = {"valid": 0, "refused": 0}
#: the floors: about half of what the derandomized examples give today
MIN_VALID = {"impulse_attention": 13, "vit_attention": 7, "simple_vit": 6, "convmixer": 4, "fit_impulse": 16,
             "attention_op": 10, "train_argv": 14, "fit_argv": 6}


def _refused():
    _COUNTS["refused"] += 1


def _valid():
    _COUNTS["valid"] += 1


def _check_ran(prop, min_valid: int, min_fraction: float):
    _COUNTS.update(valid=0, refused=0)
    prop()
    valid, total = _COUNTS["valid"], _COUNTS["valid"] + _COUNTS["refused"]
    assert valid >= min_valid and valid >= min_fraction * total, (
        f"only {valid} of {total} examples were valid and ran (need at least {min_valid} and "
        f"{min_fraction:.0%}): the property checked too little")


@settings(max_examples=40, **SETTINGS)
@given(kw=_args(
    valid=dict(dim=st.sampled_from([8, 12, 16]), heads=st.integers(1, 3), head_dim=st.sampled_from([4, 8]),
               grid=st.tuples(st.integers(3, 5), st.integers(3, 5)), mode=st.sampled_from(["I", "II", "III"]),
               alpha=st.floats(0, 1), init=st.sampled_from(["impulse", "mimetic", "random", "default"]),
               kernel=st.sampled_from([1, 3]), batch=st.integers(0, 3)),
    odd=dict(dim=weird_int, heads=weird_int, head_dim=weird_int, grid=weird_int, mode=st.sampled_from(["IV", 1]), alpha=weird_float,
             init=st.just("he"), kernel=st.one_of(odd, weird_int))))
def _impulse_attention_examples(kw):
    _impulse_attention_case(**kw)


def _impulse_attention_case(dim, heads, head_dim, grid, mode, alpha, init, kernel, batch):
    try:
        layer = ImpulseAttention(dim, num_heads=heads, head_dim=head_dim, grid_size=grid, mode=mode, alpha=alpha,
                                 init=init, kernel_size=kernel)
    except (ValueError, TypeError):
        return _refused()
    n = layer.grid_size[0] * layer.grid_size[1]
    out = layer(torch.randn(batch, n, layer.dim))
    assert out.shape == (batch, n, layer.dim) and torch.isfinite(out).all()
    _valid()


def test_impulse_attention_constructor_and_forward():
    _check_ran(_impulse_attention_examples, MIN_VALID["impulse_attention"], 0.2)


@settings(max_examples=20, **SETTINGS)
@given(kw=_args(valid=dict(dim=st.sampled_from([8, 16]), grid=st.integers(3, 4),
                           init=st.sampled_from(["impulse", "mimetic", "default"]), batch=st.integers(0, 2)),
                odd=dict(dim=weird_int, grid=st.one_of(st.integers(1, 2), weird_int))))
def _vit_attention_examples(kw):
    _vit_attention_case(**kw)


def _vit_attention_case(dim, grid, init, batch):
    try:
        layer = ViTAttention(dim, num_heads=2, head_dim=4, grid_size=grid, init=init, kernel_size=3)
    except (ValueError, TypeError):
        return _refused()
    n = layer.grid_size[0] * layer.grid_size[1]
    if n * layer.dim > 10 ** 7:
        return _refused()  # a valid layer for a grid whose input alone would not fit in memory: nothing to run
    assert layer(torch.randn(batch, n, layer.dim)).shape == (batch, n, layer.dim)
    _valid()


def test_vit_attention_constructor_and_forward():
    _check_ran(_vit_attention_examples, MIN_VALID["vit_attention"], 0.2)


@settings(max_examples=30, **SETTINGS)
@given(kw=_args(
    valid=dict(image=st.sampled_from([8, (8, 12), 12]), patch=st.sampled_from([2, 4]), dim=st.sampled_from([8, 16]),
               depth=st.integers(1, 2), classes=st.integers(1, 4), attention_kind=st.sampled_from(["impulse", "plain"]),
               batch=st.integers(0, 2)),
    odd=dict(image=weird_int, patch=st.one_of(st.just((2, 4)), weird_int), dim=weird_int, depth=weird_int,
             classes=weird_int, attention_kind=st.just("none"))))
def _simple_vit_examples(kw):
    _simple_vit_case(**kw)


def _simple_vit_case(image, patch, dim, depth, classes, attention_kind, batch):
    try:
        model = SimpleViT(image_size=image, patch_size=patch, num_classes=classes, dim=dim, depth=depth,
                          num_heads=2, head_dim=4, mlp_dim=8, attention=attention_kind, kernel_size=3)
    except (ValueError, TypeError):
        return _refused()
    h, w = model.image_size
    assert model(torch.randn(batch, 3, h, w)).shape == (batch, classes)
    _valid()


def test_simple_vit_constructor_and_forward():
    _check_ran(_simple_vit_examples, MIN_VALID["simple_vit"], 0.2)


@settings(max_examples=20, **SETTINGS)
@given(kw=_args(
    valid=dict(image=st.sampled_from([8, 12]), patch=st.sampled_from([2, 4]), dim=st.sampled_from([4, 8]),
               kernel=odd, filters=st.sampled_from(["random", "impulse", "box", "gaussian", "softmax"]),
               freeze=st.booleans(), batch=st.integers(0, 2)),
    odd=dict(image=weird_int, patch=weird_int, dim=weird_int, kernel=weird_int, filters=st.sampled_from(["learned", "x"]))))
def _convmixer_examples(kw):
    _convmixer_case(**kw)


def _convmixer_case(image, patch, dim, kernel, filters, freeze, batch):
    try:
        model = ConvMixer(image_size=image, patch_size=patch, num_classes=3, dim=dim, depth=1, kernel_size=kernel,
                          filters=filters, freeze=freeze)
    except (ValueError, TypeError):
        return _refused()
    model.eval()  # BatchNorm in training mode needs more than one value per channel
    h, w = model.image_size
    assert model(torch.randn(batch, 3, h, w)).shape == (batch, 3)
    _valid()


def test_convmixer_constructor_and_forward():
    _check_ran(_convmixer_examples, MIN_VALID["convmixer"], 0.2)


@settings(max_examples=40, **SETTINGS)
@given(kw=_args(
    valid=dict(heads=st.integers(1, 3), grid=st.integers(3, 5), kernel=st.sampled_from([1, 3]),
               dim=st.sampled_from([8, 16]), head_dim=st.integers(1, 8),
               fit_method=st.sampled_from(["closed_form", "iterative"]), scale=st.sampled_from([0.1, "auto"]),
               target_mass=st.just(0.3), pinv=st.just(0.03), noise=st.just(0.0), logit_scale=st.none(),
               renorm_every=st.just(5), layers=st.integers(1, 2)),
    odd=dict(heads=weird_int, grid=weird_int, kernel=st.one_of(odd, weird_int), dim=weird_int, head_dim=weird_int,
             fit_method=st.just("x"), scale=weird_float, target_mass=weird_float, pinv=weird_float, noise=weird_float,
             logit_scale=weird_float, renorm_every=weird_int, layers=weird_int)))
def _fit_impulse_examples(kw):
    _fit_impulse_case(**kw)


def _fit_impulse_case(heads, grid, kernel, dim, head_dim, fit_method, scale, target_mass, pinv, noise,
                          logit_scale, renorm_every, layers):
    try:
        res = fit_impulse(heads, grid, kernel, dim, head_dim, fit_method=fit_method, steps=3, scale=scale,
                          target_mass=target_mass, pinv_rtol=pinv, noise_std=noise, logit_scale=logit_scale,
                          renorm_every=renorm_every, layers=layers, warn=False)
    except (ValueError, TypeError):
        return _refused()
    assert res.q.shape == (layers, heads, dim, head_dim) and res.offsets.shape == (layers, heads, 2)
    assert torch.isfinite(res.q).all() and torch.isfinite(res.k).all()
    assert math.isfinite(res.report.mse)
    _valid()


def test_fit_impulse_answers_or_refuses():
    _check_ran(_fit_impulse_examples, MIN_VALID["fit_impulse"], 0.2)


@settings(max_examples=30, **SETTINGS)
@given(b=st.integers(0, 2), h=st.integers(1, 2), n=st.integers(1, 9), d=st.integers(1, 8),
       shared=st.booleans(), backend=st.sampled_from(["auto", "reference", "sdpa", "flash"]),
       scale=st.floats(-2, 2, allow_nan=False))
def _attention_op_examples(b, h, n, d, shared, backend, scale):
    q = torch.randn(1 if shared else b, h, n, d)
    v = torch.randn(b, h, n, d + 1)
    try:
        out = attention(q, q, v, scale, backend)
    except ValueError:
        assert backend == "flash"
        return _refused()
    assert out.shape == (b, h, n, d + 1)
    _valid()


def test_attention_op():
    _check_ran(_attention_op_examples, MIN_VALID["attention_op"], 0.4)


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

# Flag values known to be valid on the base command lines below: without them nearly every example is refused.
VALID_TRAIN = [("--data-seed", "3"), ("--seed", "3"), ("--lr", "0.01"), ("--weight-decay", "0.1"),
               ("--batch-size", "4"), ("--clip-grad", "1"), ("--alpha", "0.1"), ("--target-mass", "0.2"),
               ("--init", "random"), ("--optimizer", "adamw"), ("--mlp-dim", "16"), ("--min-lr", "0")]
VALID_FIT = [("--seed", "2"), ("--layers", "2"), ("--scale", "0.5"), ("--alpha", "0.1"), ("--num-heads", "3"),
             ("--kernel-size", "1"), ("--fit-steps", "4"), ("--dim", "20")]


def _flag_lists(flags, valid):
    """Up to 3 (flag, value) pairs, each a known-valid pair (two times in three) or any flag with an odd value."""
    pair = st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.tuples(st.sampled_from(flags), VALUES))
    return st.lists(pair, max_size=3)


def _main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@settings(max_examples=40, **SETTINGS)
@given(flags=_flag_lists(TRAIN_FLAGS, VALID_TRAIN))
def _train_argv_examples(tmp_path_factory, flags):
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
    _refused() if code else _valid()


def test_train_argv_exits_0_or_2(tmp_path_factory):
    _check_ran(lambda: _train_argv_examples(tmp_path_factory), MIN_VALID["train_argv"], 0.2)


@settings(max_examples=30, **SETTINGS)
@given(flags=_flag_lists(FIT_FLAGS, VALID_FIT))
def _fit_argv_examples(tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("fit")
    argv = ["fit", "--num-heads", "2", "--grid", "4", "--kernel-size", "3", "--dim", "16", "--head-dim", "4",
            "--fit-method", "iterative", "--fit-steps", "3", "--out", str(out / "f"), "--no-progress"]
    for flag, value in flags:
        if flag == "--fit-steps" and value in ("1e30", str(2 ** 70)):
            value = "5"
        argv += [flag, value]
    code, err = _main(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    _refused() if code else _valid()


def test_fit_argv_exits_0_or_2(tmp_path_factory):
    _check_ran(lambda: _fit_argv_examples(tmp_path_factory), MIN_VALID["fit_argv"], 0.2)
