"""impulse_attn.init_ on every family: what each init changes (and nothing else), maps at init, refusals, the
Hugging Face ViT against timm's, and a new strategy file reaching every family."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import impulse_attn as ia
from impulse_attn.filters.token_mixing import impulse_token_mlp
from impulse_attn.init import INIT_STRATEGIES

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from timm.models.mlp_mixer import MlpMixer  # noqa: E402


def simple_vit():
    torch.manual_seed(0)
    return ia.SimpleViT(image_size=16, patch_size=2, num_classes=3, dim=32, depth=2, num_heads=4, head_dim=8,
                        mlp_dim=32, init="default", kernel_size=3)


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=24, patch_size=4, embed_dim=48,
                             depth=2, num_heads=3, num_classes=3)   # a 6x6 grid, class token


def hf_vit(cls=None, cfg_cls=None):
    torch.manual_seed(0)
    cls = cls or transformers.ViTForImageClassification
    cfg_cls = cfg_cls or transformers.ViTConfig
    return cls(cfg_cls(image_size=24, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=96, num_labels=3))


def swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=40, patch_size=4,
                             window_size=5, embed_dim=24, depths=(2, 2), num_heads=(3, 6), num_classes=3)


def mixer(ratio=(1.5, 2.0)):
    torch.manual_seed(0)
    return MlpMixer(img_size=(20, 28), patch_size=4, embed_dim=32, num_blocks=2, mlp_ratio=ratio, num_classes=3)


FAMILIES = {"simple_vit": simple_vit, "timm_vit": timm_vit, "hf_vit": hf_vit, "timm_swin": swin,
            "timm_mixer": mixer}


def _changed(model, fn):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn(model)
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


# --- what each init changes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, init, expected", [
    ("simple_vit", "impulse", {r"blocks\.\d\.0\.to_qk\.weight"}),
    ("simple_vit", "mimetic", {r"blocks\.\d\.0\.to_qk\.weight"}),
    ("timm_vit", "impulse", {"pos_embed", r"blocks\.\d\.attn\.qkv\.weight", r"blocks\.\d\.attn\.proj\.weight"}),
    ("timm_vit", "random", {r"blocks\.\d\.attn\.qkv\.weight"}),
    ("hf_vit", "impulse", {"vit.embeddings.position_embeddings", r"vit\.layers\.\d\.attention\.[qkvo]_proj\.weight"}),
    ("hf_vit", "mimetic", {r"vit\.layers\.\d\.attention\.[qkvo]_proj\.weight"}),
    ("timm_swin", "impulse", {r"layers\.\d\.blocks\.\d\.attn\.relative_position_bias_table"}),
    ("timm_swin", "mimetic", {r"layers\.\d\.blocks\.\d\.attn\.qkv\.weight"}),
    ("timm_mixer", "impulse", {r"blocks\.\d\.mlp_tokens\.fc[12]\.(weight|bias)"}),
    ("timm_vit", "default", set()), ("timm_swin", "default", set()), ("timm_mixer", "default", set()),
])
def test_init_changes_what_it_should_and_nothing_else(family, init, expected):
    import re
    model = FAMILIES[family]()
    changed = _changed(model, lambda m: ia.init_(m, init, seed=1))
    patterns = [re.compile(p + "$") for p in expected]
    assert all(any(p.match(k) for p in patterns) for k in changed), sorted(changed)
    for p in patterns:  # every expected kind of tensor changed in every layer that has one
        names = [k for k in model.state_dict() if p.match(k)]
        assert names and all(k in changed for k in names), (p.pattern, sorted(changed))


def test_swin_mimetic_leaves_value_rows_and_the_bias_table():
    model = swin()
    blk = model.layers[0].blocks[0].attn
    w0, table0 = blk.qkv.weight.detach().clone(), blk.relative_position_bias_table.detach().clone()
    ia.init_(model, "mimetic")
    d = blk.qkv.in_features
    assert torch.equal(blk.qkv.weight[2 * d:], w0[2 * d:]) and not torch.equal(blk.qkv.weight[:2 * d], w0[:2 * d])
    assert torch.equal(blk.relative_position_bias_table, table0)


# --- maps at init -----------------------------------------------------------------------------------------------
def _argmax_on_offset(maps, offsets, grid, valid):
    """Every row whose target is valid has its argmax on the target; returns how many rows were checked."""
    h, w = grid
    checked = 0
    for head, (dr, dc) in enumerate(offsets.tolist()):
        for r in range(h):
            for c in range(w):
                tr, tc = r + dr, c + dc
                if not (0 <= tr < h and 0 <= tc < w):
                    continue
                i, j = r * w + c, tr * w + tc
                row = maps[:, head, i]
                if not valid(row, j):
                    continue
                assert bool((row.argmax(-1) == j).all()), (head, r, c)
                checked += 1
    return checked


def test_swin_maps_put_the_argmax_on_the_offset_inside_the_window():
    model = swin()
    rep = ia.init_(model, "impulse", seed=3, target_mass=0.4)
    images = torch.randn(2, 3, 40, 40)
    for maps_now in (ia.attention_maps(model), ia.attention_maps(model, images)):
        for layer, (m, offs) in enumerate(zip(maps_now, rep.offsets)):
            grid = tuple(model.layers[layer // 2].blocks[layer % 2].input_resolution)
            # a target in another window (or in a region the shifted-window mask separates) gets weight ~0
            n = _argmax_on_offset(m, offs, grid, lambda row, j: bool((row[:, j] > 1e-6).all()))
            assert n > 0
    # the bias alone puts exactly the requested mass on an interior target (no mask, whole window)
    b0 = ia.attention_maps(model)[0][0]
    first = rep.layers[0]
    assert first["target_mass"] == pytest.approx(0.4, abs=1e-6) and first["argmax_hit"] == 1.0
    area = 25
    assert first["logit"] == pytest.approx(math.log(0.4 * (area - 1) / 0.6))
    assert float(b0.sum(-1).max()) == pytest.approx(1.0)


def test_mixer_maps_put_the_argmax_on_the_offset_and_every_unit_is_used():
    model = mixer(ratio=(1.5, 2.0))          # 5x7 grid, N = 35, 48 token-hidden units: one full round + a partial
    rep = ia.init_(model, "impulse", seed=2)
    assert rep.layers[0]["rounds"] == 2 and rep.layers[0]["argmax_hit"] == 1.0
    fc1 = model.blocks[0].mlp_tokens.fc1.weight
    assert bool(((fc1 != 0).sum(1) <= 1).all()) and int((fc1.sum(1) == 1).sum()) >= 48 - 2 * 7
    for m, offs in zip(ia.attention_maps(model), rep.offsets):
        assert _argmax_on_offset(m, offs, (5, 7), lambda row, j: bool((row.abs().sum(-1) > 0).all())) > 0


def test_token_mlp_matches_a_loop_over_units_in_float64():
    grid, hidden, gain = (3, 5), 37, 1.7
    offsets = torch.tensor([[1, -1], [0, 1], [-1, 0]])
    w1, b1, w2, b2, anchors, unit_off = impulse_token_mlp(grid, hidden, offsets, gain)
    x = torch.randn(15, 4, dtype=torch.float64)                           # (tokens, channels)
    out = w2.double() @ torch.nn.functional.gelu(w1.double() @ x)
    expect = torch.zeros_like(x)
    count = torch.zeros(15, dtype=torch.float64)
    for p in range(hidden):
        count[int(anchors[p])] += 1
    for p in range(hidden):
        a = int(anchors[p])
        r, c = a // 5 + int(unit_off[p, 0]), a % 5 + int(unit_off[p, 1])
        src = x[r * 5 + c] if (0 <= r < 3 and 0 <= c < 5) else torch.zeros(4, dtype=torch.float64)
        expect[a] += gain / count[a] * torch.nn.functional.gelu(src)
    # float32 weights of exact values (0, 1, gain/count): one rounding of gain/count each, u = 2^-24
    torch.testing.assert_close(out, expect, rtol=4 * 2 ** -24, atol=1e-12)
    assert sorted(set(anchors.tolist())) == list(range(15))                # the partial round covers every token
    assert torch.equal(unit_off[:15], offsets[0].expand(15, 2))


@pytest.mark.parametrize("family", ["simple_vit", "timm_vit", "hf_vit"])
def test_query_key_families_put_the_argmax_on_the_offset(family):
    model = FAMILIES[family]()
    if family == "simple_vit":
        # mode II (maps from position alone); at dim 64 the default soft (laplace, mass 0.1) fit keeps every argmax
        # on its target here (at dim 128 on 8x8 it does for 3/4 of the rows: docs/families.md)
        model = ia.SimpleViT(image_size=16, patch_size=2, num_classes=3, dim=64, depth=2, num_heads=4, head_dim=16,
                             mlp_dim=32, init="default", kernel_size=3, mode="II")
    rep = ia.init_(model, "impulse", seed=0)
    grid = (8, 8) if family == "simple_vit" else (6, 6)
    for m, offs in zip(ia.attention_maps(model), rep.offsets):
        assert _argmax_on_offset(m, offs, grid, lambda row, j: True) > 0


# --- HF against timm --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["impulse", "mimetic", "official"])
def test_hf_vit_and_timm_vit_of_the_same_size_give_the_same_maps(init):
    hf, tm = hf_vit(), timm_vit()
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.copy_(tm.pos_embed)
    # the same init on the same position embedding and seed: the same weights, so the same maps
    a, b = ia.init_(hf, init, seed=5), ia.init_(tm, init, seed=5)
    if init != "mimetic":
        assert all(torch.equal(x, y) for x, y in zip(a.offsets, b.offsets))
    for x, y in zip(ia.attention_maps(hf), ia.attention_maps(tm)):
        assert torch.equal(x, y)
    torch.testing.assert_close(hf.vit.layers[0].attention.q_proj.weight, tm.blocks[0].attn.qkv.weight[:48],
                               rtol=0, atol=0)


def test_deit_drops_its_two_prefix_tokens():
    model = hf_vit(transformers.DeiTForImageClassification, transformers.DeiTConfig)
    with pytest.raises(ValueError, match="transformers' DeiT leave it so"):   # DeiT's position embedding starts at 0
        ia.init_(model, "impulse", seed=0)
    torch.nn.init.trunc_normal_(model.deit.embeddings.position_embeddings, std=0.02)
    rep = ia.init_(model, "impulse", seed=0)
    assert rep.argmax_hit > 0.95
    maps = ia.attention_maps(model, torch.randn(2, 3, 24, 24))
    assert maps[0].shape == (2, 3, 36, 36)


# --- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, init, needle", [
    (mixer, "mimetic", "does not apply to a timm MLP-Mixer"),
    (mixer, "random", "does not apply to a timm MLP-Mixer"),
    (swin, "official", "needs a positional pseudo-input"),
    (lambda: ia.ConvMixer(image_size=16, patch_size=2, dim=16, depth=1), "impulse", "no init family knows"),
    (timm_vit, "nope", "init must be one of"),
])
def test_refusals_are_one_line_and_change_nothing(make, init, needle):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError)) as e:
        ia.init_(model, init)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_settings_a_family_does_not_take_are_refused():
    with pytest.raises(ValueError, match="do not apply to an MLP-Mixer"):
        ia.init_(mixer(), "impulse", fit_method="iterative")
    with pytest.raises(ValueError, match=r"\['gain'\] do not apply to window biases"):
        ia.init_(swin(), "impulse", gain=2.0)
    with pytest.raises(ValueError, match="reaches past a 5x5 attention window"):
        ia.init_(swin(), "impulse", kernel_size=11)


# --- a new strategy is one file ---------------------------------------------------------------------------------
STRATEGY_FILE = '''
"""A test strategy: query/key weights all 0.01, token-mixing MLP the identity."""
import torch
from ..registry import Strategy, register_strategy


def qk(layers, requests, generator, **_):
    for layer, r in zip(layers, requests):
        layer.load_qk(torch.full((r.num_heads, r.dim_in, r.head_dim), 0.01),
                      torch.full((r.num_heads, r.dim_in, r.head_dim), 0.01))


def window_bias(layers, requests, generator, **_):
    for layer, r in zip(layers, requests):
        layer.load_window_bias(torch.full((r.num_heads, 2 * r.window[0] - 1, 2 * r.window[1] - 1), 0.5))
    return [{} for _ in layers]


def token_mix(layers, requests, generator, **_):
    for layer, r in zip(layers, requests):
        n = r.grid[0] * r.grid[1]
        layer.load_token_mix(torch.eye(r.hidden, n), torch.zeros(r.hidden), torch.eye(n, r.hidden), torch.zeros(n))
    return [{} for _ in layers]


STRATEGY = register_strategy(Strategy("constant_probe", "a test strategy", qk=qk, window_bias=window_bias,
                                      token_mix=token_mix))
'''

CHECK = '''
import torch, timm, transformers, impulse_attn as ia
from timm.models.mlp_mixer import MlpMixer
from impulse_attn import cli
assert "constant_probe" in ia.INIT_STRATEGIES
v = ia.SimpleViT(image_size=16, patch_size=4, dim=16, depth=1, num_heads=2, head_dim=8, mlp_dim=16, init="constant_probe")
assert bool((v.blocks[0][0].to_qk.weight == 0.01).all())
t = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
ia.init_(t, "constant_probe"); assert bool((t.blocks[0].attn.qkv.weight[:32] == 0.01).all())
h = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
ia.init_(h, "constant_probe"); assert bool((h.layers[0].attention.k_proj.weight == 0.01).all())
s = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, patch_size=2, window_size=4, embed_dim=8, depths=(1,), num_heads=(2,))
ia.init_(s, "constant_probe"); assert bool((s.layers[0].blocks[0].attn.relative_position_bias_table == 0.5).all())
m = MlpMixer(img_size=16, patch_size=4, embed_dim=16, num_blocks=1, mlp_ratio=(1.0, 2.0))
ia.init_(m, "constant_probe"); assert torch.equal(m.blocks[0].mlp_tokens.fc1.weight, torch.eye(16))
import contextlib, io
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        cli.main(["train", "--help"])
    except SystemExit:
        pass
assert "constant_probe" in buf.getvalue()
print("reached every family")
'''


def test_a_new_strategy_file_reaches_every_family_and_the_command_line():
    import impulse_attn.init.strategies as pkg
    path = Path(pkg.__file__).parent / "constant_probe.py"
    assert not path.exists()
    path.write_text(textwrap.dedent(STRATEGY_FILE))
    try:
        res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    finally:
        path.unlink()
    assert res.returncode == 0 and "reached every family" in res.stdout, res.stderr[-2000:]
    assert "constant_probe" not in INIT_STRATEGIES      # this process never imported it


# --- the command line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_flags", [
    ["--model", "timm:swin_tiny_patch4_window7_224", "--dim", "8",
     "--model-kwargs", "depths=(2,);num_heads=(2,);window_size=4"],
    ["--model", "timm:mixer_s16_224", "--dim", "16", "--depth", "2", "--model-kwargs", "mlp_ratio=(1.0,2.0)"],
    ["--model", "hf:vit", "--dim", "64", "--depth", "1", "--num-heads", "4", "--mlp-dim", "32"],
], ids=["swin", "mixer", "hf_vit"])
def test_train_then_inspect_shows_the_maps_at_init(tmp_path, model_flags):
    from impulse_attn import cli
    out = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "16", "--image-size", "16",
             "--patch-size", "2", *model_flags, "--init", "impulse", "--epochs", "1", "--batch-size", "16",
             "--no-progress", "--out", str(out)]
    assert cli.main(["train", *flags]) == 0
    assert cli.main(["inspect", str(out), "--images", "4", "--out", str(tmp_path / "insp")]) == 0
    import json
    rows = json.loads((tmp_path / "insp" / "inspect.json").read_text())["heads"]
    assert rows and (tmp_path / "insp" / "maps.png").stat().st_size > 0
    if model_flags[1].startswith("hf:"):
        # a ViT's maps on images also hold content and the class token; the fit's own record is on LN(pos)
        run = json.loads((out / "run.json").read_text())
        assert run["init"]["fit"]["argmax_hit"] > 0.9 and len(rows) == 4   # (at dim 32, 2 heads: 0.62)
    else:
        # Swin's bias and the Mixer's shift bank: every head's (round's) best single offset is its impulse offset
        assert all(r["init"]["best_offset"] == r["init"]["target_offset"] for r in rows), rows
