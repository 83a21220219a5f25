"""The prior on data: ``init_(model, init, images=...)``'s per-layer figures on real images, held to the maps the
libraries' own forward passes compute; the calibrated position scale of standard ViTs (it reaches its target share,
lands a timm and an HF ViT of one shape alike, and a second ``init_`` does not scale twice)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import impulse_attn as ia
from impulse_attn.families import calibration, on_data

from conftest import timm_softmax

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def timm_vit(dim=48, depth=2, heads=3, img=24):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=4, embed_dim=dim,
                             depth=depth, num_heads=heads, mlp_ratio=2, num_classes=3)


def hf_vit(dim=48, depth=2, heads=3, img=24):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=img, patch_size=4, hidden_size=dim, num_hidden_layers=depth,
                                 num_attention_heads=heads, intermediate_size=2 * dim, num_labels=3)
    cfg._attn_implementation = "eager"          # so that output_attentions returns the softmax it computed
    return transformers.ViTForImageClassification(cfg)


def images(n=8, size=24, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hits(probs: torch.Tensor, offsets: torch.Tensor, grid) -> tuple:
    """Argmax hit and target mass written out row by row (no shared code with the package's map quality)."""
    h, w = grid
    hit = mass = rows = 0
    for b in range(probs.shape[0]):
        for head, (dr, dc) in enumerate(offsets.tolist()):
            for r in range(h):
                for c in range(w):
                    if not (0 <= r + dr < h and 0 <= c + dc < w):
                        continue
                    row = probs[b, head, r * w + c]
                    j = (r + dr) * w + c + dc
                    hit += int(int(row.argmax()) == j)
                    mass += float(row[j])
                    rows += 1
    return hit / rows, mass / rows


def _timm_probs(model, x):
    """Per block, the softmax timm's own Attention.forward computes (fused attention off), grid tokens only."""
    p = model.num_prefix_tokens
    return [o[..., p:, p:] for o in timm_softmax(model, [blk.attn for blk in model.blocks], x)]


def _hf_probs(model, x):
    model.eval()
    with torch.no_grad():
        att = model(pixel_values=x, output_attentions=True).attentions
    return [a[..., 1:, 1:] for a in att]


@pytest.mark.parametrize("family, build, probs", [("timm", timm_vit, _timm_probs), ("hf", hf_vit, _hf_probs)])
@pytest.mark.parametrize("init", ["impulse", "official"])
def test_on_data_figures_are_those_of_the_libraries_own_forward(family, build, probs, init):
    model = build().double()                   # float64: argmax ties and rounding cannot blur the comparison
    x = images().double()
    rep = ia.init_(model, init, seed=1, images=x)
    assert rep.images == 8 and len(rep.data) == 2
    grid = (6, 6)
    # timm runs the whole forward in float64; transformers' eager attention takes its softmax in float32 and casts
    # back, so its weights carry a float32 rounding each (relative ε₃₂/2), which the mean over rows keeps below ε₃₂.
    rel = 1e-12 if family == "timm" else float(torch.finfo(torch.float32).eps)
    for i, (p, row) in enumerate(zip(probs(model, x), rep.data)):
        hit, mass = _hits(p, rep.offsets[i], grid)
        assert row["argmax_hit"] == pytest.approx(hit, abs=1e-12), i
        assert row["target_mass"] == pytest.approx(mass, rel=rel), i
    # the position share: cos² of each block's layer-normed input with its position embedding, recomputed here
    pos = (model.pos_embed[0, 1:] if family == "timm" else model.vit.embeddings.position_embeddings[0, 1:]).detach()
    first = (model.blocks[0].norm1 if family == "timm" else model.vit.layers[0].layernorm_before)
    with torch.no_grad():
        tokens = (model.patch_embed(x) + pos) if family == "timm" else \
            model.vit.embeddings.patch_embeddings(x) + pos
        u = first(tokens)
    u, pc = u - u.mean(-1, keepdim=True), pos - pos.mean(-1, keepdim=True)
    cos2 = ((u * pc).sum(-1) ** 2 / ((u * u).sum(-1) * (pc * pc).sum(-1))).mean()
    assert rep.data[0]["position_share"] == pytest.approx(float(cos2), rel=1e-9)


def test_swin_on_data_hit_matches_its_own_window_softmax():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
                              window_size=4, embed_dim=24, depths=(2,), num_heads=(3,), num_classes=3).double()
    x = images(4, 32).double()
    rep = ia.init_(model, "impulse", seed=2, images=x, window_mass=0.4)
    captured = timm_softmax(model, [b.attn for b in model.layers[0].blocks], x)
    # Unshifted block 0: windows are plain 4x4 tiles in row-major order; a query's target counts when it is in its
    # own window. Written in window coordinates, independently of the family's scatter onto the grid.
    p = captured[0].reshape(4, -1, 3, 16, 16)                # (images, windows, heads, query, key)
    offsets = rep.offsets[0].tolist()
    hit = rows = 0
    for head, (dr, dc) in enumerate(offsets):
        for q in range(16):
            r, c = divmod(q, 4)
            if not (0 <= r + dr < 4 and 0 <= c + dc < 4):
                continue
            k = (r + dr) * 4 + c + dc
            hit += int((p[:, :, head, q].argmax(-1) == k).sum())
            rows += p.shape[0] * p.shape[1]
    assert rep.data[0]["argmax_hit"] == pytest.approx(hit / rows, abs=1e-12)
    assert 0.9 < rep.data[0]["bias_share"] <= 1.0    # timm's qkv init (std 0.02) leaves the content logits small


def test_mixer_on_data_maps_are_the_token_mlps_jacobian():
    from timm.models.mlp_mixer import MlpMixer
    torch.manual_seed(0)
    model = MlpMixer(img_size=16, patch_size=4, embed_dim=8, num_blocks=1, mlp_ratio=(1.0, 2.0),
                     num_classes=3).double()
    x = images(2, 16).double()
    ia.init_(model, "impulse", seed=0)
    maps = ia.attention_maps(model, x)[0]                       # (B, rounds, N, N), one round here
    blk = model.blocks[0]
    with torch.no_grad():
        tokens = blk.norm1(model.stem(x))                       # the token MLP's input (B, N, C)
    for b in range(2):
        t = tokens[b].T                                         # (C, N): the MLP mixes tokens per channel
        jac = torch.autograd.functional.jacobian(lambda z: blk.mlp_tokens(z), t)   # (C, N, C, N)
        per_channel = torch.stack([jac[c, :, c, :] for c in range(t.shape[0])]).mean(0)
        torch.testing.assert_close(maps[b, 0], per_channel, rtol=1e-9, atol=1e-12)


def test_content_that_swamps_position_gives_a_low_hit_and_position_that_dominates_a_high_one():
    x = images(16)
    swamped = timm_vit()
    with torch.no_grad():
        swamped.patch_embed.proj.weight.mul_(100.0)        # content about 100x the paper's scaled position
    low = ia.init_(swamped, "impulse", seed=0, images=x, fit_kwargs={"pos_scale": 18})
    high = ia.init_(timm_vit(), "impulse", seed=0, images=x, position_share=0.995)
    # (unrelated vectors in D dims share about 1/D: here 1/48)
    assert low.on_data["position_share"] < 0.05 and low.on_data["argmax_hit"] < 0.3
    assert high.on_data["position_share"] > 0.98 and high.on_data["argmax_hit"] > 0.95
    # on the pseudo-input (position alone) both look the same: only the images tell them apart
    assert low.argmax_hit == pytest.approx(high.argmax_hit, abs=0.05)


def test_position_share_of_constructed_inputs():
    pos = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    assert on_data.position_share(3.0 * pos[None], pos) == pytest.approx(1.0)
    # content orthogonal to the position, of the same norm, per token: half the variance
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    p = pos.double() - pos.double().mean(-1, keepdim=True)
    ones = torch.ones(16, dtype=torch.float64) / 4.0
    content = torch.stack([_orthogonal(row, ones, q[:, 0]) for row in p])
    assert on_data.position_share((p + content)[None], pos) == pytest.approx(0.5, rel=1e-9)


def _orthogonal(row, ones, direction):
    """A vector with the norm of ``row``, orthogonal to it and to the constant vector (so centering keeps it)."""
    v = direction - (direction @ ones) / (ones @ ones) * ones
    v = v - (v @ row) / (row @ row) * row
    return v / v.norm() * row.norm()


@pytest.mark.parametrize("build", [timm_vit, hf_vit])
@pytest.mark.parametrize("share", [0.8, 0.97])
def test_calibration_reaches_its_target_share(build, share):
    rep = ia.init_(build(), "impulse", seed=0, images=images(16), position_share=share)
    cal = rep.source.extra["position_calibration"]
    assert cal["source"] == "images" and cal["target_share"] == share
    assert min(cal["block_shares"]) == pytest.approx(share, rel=calibration.TOLERANCE)
    assert rep.source.constants["pos_scale"] == pytest.approx(cal["pos_scale"])


@pytest.mark.parametrize("build", [timm_vit, hf_vit])
@pytest.mark.parametrize("init, kw", [("impulse", {}), ("official", {}), ("impulse", {"fit_kwargs": {"pos_scale": 18}}),
                                      ("mimetic", {})])
def test_a_second_init_does_not_scale_the_position_again(build, init, kw):
    model = build()
    ia.init_(model, init, seed=3, **kw)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        ia.init_(model, init, seed=3, **kw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, once[k]), k


def test_a_changed_position_embedding_is_scaled_from_where_it_is():
    model = timm_vit()
    ia.init_(model, "impulse", seed=0, fit_kwargs={"pos_scale": 18})
    with torch.no_grad():
        model.pos_embed.mul_(0.5)                     # trained or edited since: no longer what the init wrote
    before = model.pos_embed.detach().clone()
    ia.init_(model, "impulse", seed=0, fit_kwargs={"pos_scale": 2})
    assert torch.equal(model.pos_embed.detach(), before * 2)


@pytest.mark.parametrize("call, needle", [
    (lambda m: ia.init_(m, "impulse", images=torch.zeros(2, 3, 16, 16)), "images must have shape"),
    (lambda m: ia.init_(m, "impulse", images=torch.zeros(0, 3, 24, 24)), "batch >= 1"),
    (lambda m: ia.init_(m, "impulse", images=torch.zeros(2, 1, 24, 24)), "images must have shape"),
    (lambda m: ia.init_(m, "impulse", images=[1, 2]), "images must be"),
    (lambda m: ia.init_(m, "impulse", position_share=1.0), "position_share must be a number in (0, 1)"),
    (lambda m: ia.init_(m, "official", position_share=0.9), "do not apply to init 'official'"),
    (lambda m: ia.init_(m, "mimetic", position_share=0.9), "do not apply to init 'mimetic'"),
    (lambda m: ia.init_(m, "impulse", position_share=0.9, fit_kwargs={"pos_scale": 3}), "explicit pos_scale"),
    (lambda m: ia.init_(m, "impulse", fit_kwargs={"fit_input": "pixels"}), "fit_input"),
])
def test_bad_prior_settings_are_refused_before_anything_changes(call, needle):
    model = timm_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError)) as e:
        call(model)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_every_family_reports_the_prior_on_data():
    from timm.models.mlp_mixer import MlpMixer
    torch.manual_seed(0)
    models = {
        "simple": ia.SimpleViT(image_size=24, patch_size=4, num_classes=3, dim=32, depth=2, num_heads=4,
                               head_dim=8, mlp_dim=32, init="default", kernel_size=3),
        "swin": timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=24, patch_size=4,
                                  window_size=3, embed_dim=24, depths=(2,), num_heads=(3,), num_classes=3),
        "mixer": MlpMixer(img_size=24, patch_size=4, embed_dim=16, num_blocks=2, num_classes=3),
        "timm": timm_vit(), "hf": hf_vit(),
    }
    share_key = {"swin": "bias_share", "mixer": None}
    for name, model in models.items():
        rep = ia.init_(model, "impulse", seed=0, images=images(4))
        assert len(rep.data) == len(rep.layers), name
        for row in rep.data:
            assert 0.0 <= row["argmax_hit"] <= 1.0 and 0.0 <= row["target_mass"] <= 1.0, name
            key = share_key.get(name, "position_share")
            if key is not None:
                assert 0.0 <= row[key] <= 1.0, name
        assert "on 4 images" in str(rep)
    # an init without offsets still reports the shares (the ViT's own init: position alone of its inputs)
    rep = ia.init_(timm_vit(), "default", images=images(4))
    assert all(row.get("argmax_hit") is None and 0 <= row["position_share"] <= 1 for row in rep.data)


def _cifar(root: Path, n: int) -> torch.Tensor:
    from PIL import Image
    files = sorted((root / "train").glob("*/*.jpg"))[:: max(1, 5000 // n)][:n]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    return (x.float() / 255 - 0.5) / 0.5


@pytest.mark.parametrize("dim", [64, 128])
def test_timm_and_hf_vits_of_one_shape_land_alike_on_real_images(cifar_mini, dim):
    x = _cifar(cifar_mini, 128)
    hits = {}
    for name, build in (("timm", timm_vit), ("hf", hf_vit)):
        rep = ia.init_(build(dim=dim, depth=4, heads=4, img=32), "impulse", seed=0, images=x)
        hits[name] = rep.on_data["argmax_hit"]
    assert abs(hits["timm"] - hits["hf"]) <= 0.05, hits


# --- every run records the prior at step 0; inspect shows it beside the pseudo-input maps ------------------------
RUN = dict(dataset="synthetic", synthetic_train=40, synthetic_test=20, synthetic_classes=2, image_size=16,
           patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64, steps=2, batch_size=20, progress=False)


@pytest.mark.parametrize("model, init, share", [("timm:vit_tiny_patch16_224", "impulse", "position_share"),
                                                ("hf:vit", "default", "position_share"),
                                                ("vit", "impulse", "position_share")])
def test_every_run_records_the_prior_on_its_training_images_at_step_0(tmp_path, model, init, share):
    import json

    from impulse_attn.training import TrainConfig, train
    extra = {"head_dim": 8} if model == "vit" else {}
    train(TrainConfig(**RUN, **extra, model=model, init=init, out=str(tmp_path / "run")), log=lambda m: None)
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["init"]["on_data"]
    assert record["images"] == 40 and len(record["layers"]) == 2
    assert 0 < record["mean"][share] <= 1
    has_offsets = init == "impulse"
    assert (record["mean"]["argmax_hit"] is not None) == has_offsets
    if model.startswith("timm") and has_offsets:     # the calibration read the same images
        run = json.loads((tmp_path / "run" / "summary.json").read_text())["init"]
        cal = run["timm_init"]["extra"]["position_calibration"]
        assert cal["source"] == "images" and cal["images"] == 40


def test_inspect_puts_the_pseudo_input_maps_beside_the_maps_on_images(tmp_path):
    import json

    from impulse_attn.training import TrainConfig, train
    from impulse_attn.training.inspect import inspect_run
    run = tmp_path / "run"
    train(TrainConfig(**RUN, model="timm:vit_tiny_patch16_224", init="impulse", out=str(run)), log=lambda m: None)
    lines = []
    ins = inspect_run(run, images=8, log=lines.append)
    data = json.loads((run / "inspect.json").read_text())
    assert data["prior_on_data"]["images"] == 40
    for layer in data["layers"]:
        assert layer["pseudo_target_mass"] is not None and layer["init_target_mass"] is not None
    assert "no content / images" in ins.table and any("training images" in line for line in lines)
