"""torchvision's VisionTransformer and Swin Transformer through ``impulse_attn.init_``, ``attention_maps`` and
``--model tv:<name>``: what each init changes, argmax on the offset, the ViT's maps against a timm ViT of the same
shape, the maps against the attention torchvision's own forward computes (float64), refusals in one line that change
nothing, and the command line (train, then inspect)."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import impulse_attn as ia
from conftest import argmax_on_offset, cli_refused, quiet, run_hooked
from impulse_attn.families import family_for_spec

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
from torchvision.models import VisionTransformer  # noqa: E402
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:impulse fit is no better:RuntimeWarning")]


def tv_vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=24, patch_size=4, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96,
                             num_classes=3)                      # a 6x6 grid, class token


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=24, patch_size=4, embed_dim=48,
                             depth=2, num_heads=3, num_classes=3)


def tv_swin(v2=False, size=(32, 32)):
    """An 8x8 then 4x4 grid of 4x4 windows (stage 1's grid is one window: torchvision drops its shift)."""
    torch.manual_seed(0)
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[3, 6], window_size=[4, 4],
                            num_classes=3, **extra)
    if size is not None:
        model.impulse_attn_image_size = size
    return model


def images(n=2, size=24, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


BUILD = {"tv_vit": tv_vit, "tv_swin": tv_swin, "tv_swin_v2": lambda: tv_swin(v2=True)}
BLOCK = r"encoder\.layers\.encoder_layer_\d\.self_attention\."
STAGE = r"features\.[13]\.\d\.attn\."


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- what each init changes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, init, expected", [
    ("tv_vit", "impulse", {r"encoder\.pos_embedding", BLOCK + "in_proj_weight", BLOCK + r"out_proj\.weight"}),
    ("tv_vit", "mimetic", {BLOCK + "in_proj_weight", BLOCK + r"out_proj\.weight"}),
    ("tv_vit", "random", {BLOCK + "in_proj_weight"}),
    ("tv_swin", "impulse", {STAGE + "relative_position_bias_table"}),
    ("tv_swin", "mimetic", {STAGE + r"qkv\.weight"}),
    ("tv_swin", "random", {STAGE + r"qkv\.weight"}),
    ("tv_vit", "default", set()), ("tv_swin", "default", set()), ("tv_swin_v2", "default", set()),
])
def test_init_changes_what_it_should_and_nothing_else(family, init, expected):
    model = BUILD[family]()
    before = _state(model)
    ia.init_(model, init, seed=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    patterns = [re.compile(p + "$") for p in expected]
    assert all(any(p.match(k) for p in patterns) for k in changed), sorted(changed)
    for p in patterns:  # every expected kind of tensor changed in every layer that has one
        names = [k for k in model.state_dict() if p.match(k)]
        assert names and all(k in changed for k in names), (p.pattern, sorted(changed))


# The fused in_proj_weight is one tensor: compare its query, key and value rows (and bias entries) separately, with
# nonzero biases drawn first so that zeroing one shows (the query/key adapter zeroes the query/key biases; the
# mimetic init keeps them, as for timm's fused qkv).
@pytest.mark.parametrize("family, init, weights, biases", [
    ("tv_vit", "random", "qk", "qk"), ("tv_vit", "impulse", "qkv", "qk"), ("tv_vit", "mimetic", "qkv", ""),
    ("tv_swin", "mimetic", "qk", "qk"), ("tv_swin", "impulse", "", ""),
])
def test_fused_projection_changes_exactly_the_row_blocks_of_the_init(family, init, weights, biases):
    model = BUILD[family]()
    if family == "tv_vit":
        fused = [(layer.self_attention, "in_proj_weight", "in_proj_bias") for layer in model.encoder.layers]
    else:
        fused = [(b.attn.qkv, "weight", "bias") for stage in (model.features[1], model.features[3]) for b in stage]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod, _, b in fused:
            getattr(mod, b).copy_(torch.randn(getattr(mod, b).shape, generator=gen))
    before = [(getattr(m, w).detach().clone(), getattr(m, b).detach().clone()) for m, w, b in fused]
    ia.init_(model, init, seed=1)
    for i, ((mod, w, b), (w0, b0)) in enumerate(zip(fused, before)):
        d = w0.shape[1]
        for part, rows in zip("qkv", (slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d))):
            assert torch.equal(getattr(mod, w)[rows], w0[rows]) != (part in weights), (i, part, "weight")
            assert torch.equal(getattr(mod, b)[rows], b0[rows]) != (part in biases), (i, part, "bias")
        if "q" in biases:                                      # zeroed, not redrawn
            assert not bool(getattr(mod, b)[:2 * d].any()), i


# --- argmax on the offset ---------------------------------------------------------------------------------------


def test_vit_maps_put_the_argmax_on_the_offset():
    model = tv_vit()
    x = images(4)
    rep = ia.init_(model, "impulse", seed=0, images=x)
    for maps in (ia.attention_maps(model), ia.attention_maps(model, x)):
        for m, offs in zip(maps, rep.offsets):
            assert m.shape[-1] == 36 and argmax_on_offset(m, offs, (6, 6), lambda row, j: True) > 0
    assert rep.argmax_hit == 1.0 and rep.on_data["argmax_hit"] == 1.0


def test_swin_maps_put_the_argmax_on_the_offset_inside_the_window():
    model = tv_swin()
    rep = ia.init_(model, "impulse", seed=3, window_mass=0.4)
    grids = [(8, 8), (8, 8), (4, 4), (4, 4)]
    for maps in (ia.attention_maps(model), ia.attention_maps(model, images(2, 32))):
        for m, offs, grid in zip(maps, rep.offsets, grids):
            # a target in another window (or a region the shifted-window mask separates) gets weight ~0
            assert argmax_on_offset(m, offs, grid, lambda row, j: bool((row[:, j] > 1e-6).all())) > 0
    first = rep.layers[0]
    assert first["target_mass"] == pytest.approx(0.4, abs=1e-6) and first["argmax_hit"] == 1.0


# --- the torchvision ViT against timm's -------------------------------------------------------------------------
@pytest.mark.parametrize("init, kw", [("impulse", {"fit_kwargs": {"pos_scale": 18}}), ("mimetic", {}),
                                      ("official", {})])
def test_tv_vit_and_timm_vit_of_the_same_shape_give_the_same_maps_and_weights(init, kw):
    tv, tm = tv_vit(), timm_vit()
    with torch.no_grad():
        tv.encoder.pos_embedding.copy_(tm.pos_embed)
    # the same init on the same position embedding and seed writes the same weights (the default impulse init
    # calibrates the position scale to each model's own content, which differs between the libraries' stems)
    a, b = ia.init_(tv, init, seed=5, **kw), ia.init_(tm, init, seed=5, **kw)
    if init != "mimetic":
        assert all(torch.equal(x, y) for x, y in zip(a.offsets, b.offsets))
    for x, y in zip(ia.attention_maps(tv), ia.attention_maps(tm)):
        assert torch.equal(x, y)
    assert torch.equal(tv.encoder.pos_embedding, tm.pos_embed)
    for layer, blk in zip(tv.encoder.layers, tm.blocks):
        assert torch.equal(layer.self_attention.in_proj_weight, blk.attn.qkv.weight)
        assert torch.equal(layer.self_attention.out_proj.weight, blk.attn.proj.weight)


# --- torchvision's own forward, in float64 ----------------------------------------------------------------------
def _vit_forward_attention(model, x):
    """Per block, the attention weights (B, heads, T, T) torchvision's forward computes: each EncoderBlock's
    self_attention is asked for its per-head weights (the block drops them), read by a forward hook."""
    out, hooks = [], []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        hooks.append(mha.register_forward_pre_hook(
            lambda m, args, kwargs: (args, {**kwargs, "need_weights": True, "average_attn_weights": False}),
            with_kwargs=True))
        hooks.append(mha.register_forward_hook(lambda m, args, res: out.append(res[1].detach())))
    run_hooked(model, x, hooks)
    return out


class _Softmaxes(TorchFunctionMode):
    """Every ``F.softmax`` result of the code run inside: torchvision's ``shifted_window_attention`` takes one per
    block, over (B·windows, heads, A, A)."""

    def __init__(self):
        super().__init__()
        self.out = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        res = func(*args, **(kwargs or {}))
        if func is F.softmax:
            self.out.append(res.detach())
        return res


def _swin_forward_maps(model, x, grids, window, shifts):
    """Per block, torchvision's own window softmax placed on its stage's grid, written from the window layout
    (windows in row-major order over the grid rolled back by the block's shift) without the package's scatter."""
    model.eval()
    with torch.no_grad(), _Softmaxes() as cap:
        model(x)
    out = []
    for p, (h, w), (sh, sw) in zip(cap.out, grids, shifts):
        wh, ww = window
        p = p.reshape(x.shape[0], h // wh, w // ww, p.shape[1], wh * ww, wh * ww)
        maps = torch.zeros(x.shape[0], p.shape[3], h * w, h * w, dtype=p.dtype)
        for i in range(h // wh):
            for j in range(w // ww):
                tok = torch.tensor([((i * wh + a + sh) % h) * w + (j * ww + c + sw) % w
                                    for a in range(wh) for c in range(ww)])
                maps[:, :, tok[:, None], tok[None, :]] = p[:, i, j]
        out.append(maps)
    return out


@pytest.mark.parametrize("init", ["impulse", "mimetic"])
def test_vit_maps_are_torchvisions_own_attention_in_float64(init):
    model = tv_vit()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():   # nonzero query/key biases: the mimetic init keeps them, so the maps must add them
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_bias.copy_(0.5 * torch.randn(144, generator=gen))
    ia.init_(model, init, seed=4)
    model.double()
    x = images(2, dtype=torch.float64)
    ours, theirs = ia.attention_maps(model, x), _vit_forward_attention(model, x)
    assert len(ours) == len(theirs) == 2
    for a, p in zip(ours, theirs):
        assert p.shape == (2, 3, 37, 37) and a.shape == (2, 3, 36, 36) and a.dtype == torch.float64
        torch.testing.assert_close(a, p[..., 1:, 1:], rtol=1e-12, atol=1e-14)
        assert float(a.sum(-1).min()) > 0.5


@pytest.mark.parametrize("v2, init", [(False, "impulse"), (False, "mimetic"), (True, "default")])
def test_swin_maps_are_torchvisions_own_window_softmax_in_float64(v2, init):
    model = tv_swin(v2=v2)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():   # nonzero qkv biases (v2 drops the key part in its forward; so must the maps)
        for m in model.modules():
            if isinstance(getattr(m, "qkv", None), torch.nn.Linear):
                m.qkv.bias.copy_(0.5 * torch.randn(m.qkv.bias.shape, generator=gen))
    rep = ia.init_(model, init, seed=2)
    model.double()
    x = images(2, 32, dtype=torch.float64)
    grids, shifts = [(8, 8), (8, 8), (4, 4), (4, 4)], [(0, 0), (2, 2), (0, 0), (0, 0)]
    theirs = _swin_forward_maps(model, x, grids, (4, 4), shifts)
    ours = ia.attention_maps(model, x)
    assert len(ours) == len(theirs) == 4
    for a, p in zip(ours, theirs):
        torch.testing.assert_close(a, p, rtol=1e-12, atol=1e-14)
    if init == "impulse":   # the bias table's index convention: the forward's own maps peak on the offsets
        for p, offs, grid in zip(theirs, rep.offsets, grids):
            assert argmax_on_offset(p, offs, grid, lambda row, j: bool((row[:, j] > 1e-6).all())) > 0
    data = ia.init_(model, "default", images=x).data
    assert len(data) == 4 and all(0.0 <= row["bias_share"] <= 1.0 for row in data)


def test_on_data_figures_are_those_of_torchvisions_forward():
    model = tv_vit().double()
    x = images(4, dtype=torch.float64)
    rep = ia.init_(model, "impulse", seed=1, images=x)
    theirs = _vit_forward_attention(model, x)
    for i, (p, row) in enumerate(zip(theirs, rep.data)):
        p = p[..., 1:, 1:]
        target, hits, mass, rows = rep.offsets[i], 0, 0.0, 0
        for head, (dr, dc) in enumerate(target.tolist()):
            for r in range(6):
                for c in range(6):
                    if 0 <= r + dr < 6 and 0 <= c + dc < 6:
                        j = (r + dr) * 6 + c + dc
                        hits += int((p[:, head, r * 6 + c].argmax(-1) == j).sum())
                        mass += float(p[:, head, r * 6 + c, j].sum())
                        rows += x.shape[0]
        assert row["argmax_hit"] == pytest.approx(hits / rows, abs=1e-12)
        assert row["target_mass"] == pytest.approx(mass / rows, rel=1e-9)
    # the first block's position share, from torchvision's own modules: cos² of LN(patches + position) and position
    pos = model.encoder.pos_embedding[0, 1:].detach()
    with torch.no_grad():
        u = model.encoder.layers[0].ln_1(model._process_input(x) + pos)
    u, pc = u - u.mean(-1, keepdim=True), pos - pos.mean(-1, keepdim=True)
    cos2 = ((u * pc).sum(-1) ** 2 / ((u * u).sum(-1) * (pc * pc).sum(-1))).mean()
    assert rep.data[0]["position_share"] == pytest.approx(float(cos2), rel=1e-9)


# --- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, init, kw, needle", [
    (tv_vit, "impulse", {"images": images(2, 32)}, "images must have shape (batch >= 1, 3, 24, 24)"),
    (tv_swin, "impulse", {"images": images(2, 40)}, "images must have shape (batch >= 1, 3, 32, 32)"),
    (lambda: tv_swin(v2=True), "impulse", {}, "does not apply to a torchvision Swin Transformer V2"),
    (lambda: tv_swin(v2=True), "mimetic", {}, "only init 'default' applies"),
    (lambda: tv_swin(size=None), "impulse", {"images": images(2, 36)}, "does not tile stage 0's 9x9 token grid"),
    (lambda: tv_swin(size=(64, 48)), "impulse", {}, "does not tile stage 1's 8x6 token grid"),
    (lambda: tv_swin(size=None), "impulse", {}, "the token grid of this torchvision Swin Transformer is unknown"),
    (tv_swin, "official", {}, "needs a positional pseudo-input"),
    (tv_swin, "impulse", {"kernel_size": 9}, "reaches past a 4x4 attention window"),
    (tv_vit, "impulse", {"window_mass": 0.5}, "window_mass"),
])
def test_refusals_are_one_line_and_change_nothing(make, init, kw, needle):
    model = make()
    before = _state(model)
    size = getattr(model, "impulse_attn_image_size", None)
    with pytest.raises((ValueError, TypeError)) as e:
        ia.init_(model, init, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert _unchanged(model, before) and getattr(model, "impulse_attn_image_size", None) == size


def test_init_from_images_records_the_grid_and_the_state_dict_stays_torchvisions():
    model = tv_swin(size=None)
    keys = set(model.state_dict())
    ia.init_(model, "impulse", seed=0, images=images(2, 32))
    assert model.impulse_attn_image_size == (32, 32) and set(model.state_dict()) == keys
    assert [tuple(m.shape) for m in ia.attention_maps(model)] == [(1, 3, 64, 64)] * 2 + [(1, 6, 16, 16)] * 2


@pytest.mark.parametrize("name, needle", [
    ("vit_b_61", "torchvision has no model 'vit_b_61' (try tv:vit_b_16"),
    ("resnet18", "is a torchvision.models.resnet.ResNet, which no init family handles"),
    ("fasterrcnn_resnet50_fpn", "is a torchvision detection model"),
])
def test_tv_names_no_family_takes_are_refused_in_one_line(name, needle):
    with pytest.raises(ValueError) as e:
        family_for_spec(f"tv:{name}")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert family_for_spec("tv:vit_b_16")[0].name == "tv_vit"
    assert [family_for_spec(f"tv:{n}")[0].name for n in ("swin_t", "swin_v2_t")] == ["tv_swin", "tv_swin"]


# --- the command line -------------------------------------------------------------------------------------------
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-train", "40", "--synthetic-test", "20", "--synthetic-classes", "2",
             "--image-size", "16", "--steps", "2", "--batch-size", "20", "--no-progress"]
VIT_FLAGS = ["--patch-size", "4", "--model", "tv:vit_b_16", "--dim", "32", "--depth", "1", "--num-heads", "4",
             "--mlp-dim", "64"]
SWIN_FLAGS = ["--patch-size", "2", "--model", "tv:swin_t", "--dim", "12",
              "--model-kwargs", "depths=(2,);num_heads=(3,);window_size=4"]


@pytest.mark.parametrize("flags, cls", [(VIT_FLAGS, "VisionTransformer"), (SWIN_FLAGS, "SwinTransformer")],
                         ids=["vit", "swin"])
def test_train_then_inspect(tmp_path, flags, cls):
    from impulse_attn import cli
    from impulse_attn.training.inspect import inspect_run
    run = tmp_path / "run"
    assert cli.main(["train", *SYNTHETIC, *flags, "--out", str(run)]) == 0
    assert (run / "summary.json").is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["init"]["model"]["class"].endswith(cls)
    assert record["init"]["fit"]["argmax_hit"] == 1.0
    inspection = inspect_run(run, images=8, log=quiet)
    assert inspection is not None and (run / "maps.png").stat().st_size > 0


@pytest.mark.parametrize("flags, needles", [
    ([*VIT_FLAGS, "--model-kwargs", "hidden_dim=64"], ("--model-kwargs sets hidden_dim=64", "--dim 32")),
    (["--patch-size", "2", "--model", "tv:swin_t", "--dim", "12", "--model-kwargs", "embed_dim=16"],
     ("--model-kwargs sets embed_dim=16", "give it once")),
    (["--patch-size", "2", "--model", "tv:swin_v2_t", "--dim", "12",
      "--model-kwargs", "depths=(2,);num_heads=(3,);window_size=4"], ("only init 'default' applies",)),
    (["--patch-size", "2", "--model", "tv:swin_t", "--dim", "12",
      "--model-kwargs", "depths=(2,2,2);num_heads=(3,6,12);window_size=4"], ("does not tile stage 2's 2x2",)),
    (["--patch-size", "2", "--model", "tv:resnet18"], ("no init family handles",)),
])
def test_command_line_refusals_are_one_line(tmp_path, capsys, flags, needles):
    cli_refused(["train", *SYNTHETIC, *flags, "--out", str(tmp_path / "run")], capsys, *needles)
    assert not (tmp_path / "run").exists()
