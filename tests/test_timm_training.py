"""timm VisionTransformers in the training loop and the command line (--model timm:<name>), and timm's own
regularization (mixup/cutmix, label smoothing, model EMA) as run settings."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from impulse_attn import cli
from impulse_attn.training import TrainConfig, build_model, load_checkpoint, train
from impulse_attn.training import loop as loop_mod
from impulse_attn.training.compare import parse_variant, run_compare
from impulse_attn.families import timm_vit
from impulse_attn.families.source import given_keywords
from impulse_attn.training.inspect import inspect_run
from impulse_attn.training.metrics import read_metrics

from conftest import quiet, run_config, scores, single_thread

timm = pytest.importorskip("timm")  # a test dependency (Makefile); everything of ours is imported above

NAME = "timm:vit_tiny_patch16_224"
# An 8x8 token grid; dim 64 > the 63 independent directions of LN(pos_embed) lets the closed form hit every shift.
TINY = dict(dataset="synthetic", synthetic_train=96, synthetic_test=32, synthetic_classes=2, image_size=16,
            patch_size=2, model=NAME, dim=64, depth=1, num_heads=4, mlp_dim=128, epochs=2, batch_size=16, lr=3e-3,
            progress=False)
TINY_FLAGS = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "16", "--synthetic-classes",
              "2", "--image-size", "16", "--patch-size", "2", "--model", NAME, "--dim", "32", "--depth", "1",
              "--num-heads", "4", "--mlp-dim", "64", "--epochs", "1", "--batch-size", "16", "--no-progress"]




@pytest.fixture(autouse=True, scope="module")
def _one_thread_no_fit_notes():
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fit's "no better than uniform" note at tiny sizes
        yield


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    return run_config(TINY, tmp_path, name, **kw)


# --- building ---------------------------------------------------------------------------------------------------
def test_size_flags_become_timm_overrides():
    cfg = TrainConfig(**{**TINY, "dim": 48, "mlp_dim": 100, "num_heads": 3, "depth": 2})
    kw = given_keywords(timm_vit.SOURCE, cfg.build_request(num_classes=7, image_size=16, channels=3))
    assert kw["embed_dim"] == 48 and kw["depth"] == 2 and kw["num_heads"] == 3 and kw["patch_size"] == 2
    assert kw["img_size"] == 16 and kw["num_classes"] == 7 and kw["in_chans"] == 3
    torch.manual_seed(0)
    model, _ = build_model(dataclasses.replace(cfg, init="random"), 7, 16)
    assert model.embed_dim == 48 and len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 3
    assert model.blocks[0].mlp.fc1.out_features == 100           # 100 / 48 is no exact ratio: still 100 wide
    assert tuple(model.patch_embed.grid_size) == (8, 8) and model.head.out_features == 7
    # sizes that are not given stay the model's own (ViT-Ti: 192 wide, 12 blocks, 3 heads)
    own = given_keywords(timm_vit.SOURCE, TrainConfig(model=NAME, image_size=32).build_request(10, 32, 3))
    assert not {"embed_dim", "depth", "num_heads", "mlp_ratio"} & set(own)


@pytest.mark.parametrize("init, fit_method", [("impulse", "closed_form"), ("official", "closed_form"),
                                              ("mimetic", "closed_form"), ("random", "closed_form"),
                                              ("default", "closed_form")])
def test_inits_map_to_init_and_timms_own(init, fit_method):
    cfg = TrainConfig(**{**TINY, "init": init, "fit_method": fit_method})
    torch.manual_seed(0)
    model, rec = build_model(cfg, 2, 16)
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=16, patch_size=2,
                              embed_dim=64, depth=1, num_heads=4, mlp_ratio=2.0)
    ratio = float(model.pos_embed.detach().norm() / plain.pos_embed.detach().norm())
    if init in ("impulse", "official"):   # the position embedding scaled (official: x18; else calibrated), q/k fitted
        scale = 18.0 if init == "official" else rec["timm_init"]["constants"]["pos_scale"]
        assert scale > 18.0 or init == "official"      # the calibrated share needs more position than x18
        assert ratio == pytest.approx(scale, rel=1e-5)
        method = "official" if init == "official" else fit_method
        assert rec["fit"]["fit_method"] == f"timm/{method}" and len(rec["offsets"]) == 1
        if init == "impulse":
            assert rec["fit"]["argmax_hit"] > 0.95 and rec["fit"]["target_mass"] == pytest.approx(0.1, abs=0.01)
        assert "fit_summary" in rec and rec["timm_init"]["init"] == init
    elif init == "mimetic":  # query/key/value re-initialized, position embedding untouched
        assert ratio == pytest.approx(1.0) and rec["timm_init"]["init"] == "mimetic" and "fit" not in rec
        assert not torch.equal(model.blocks[0].attn.qkv.weight, plain.blocks[0].attn.qkv.weight)
    elif init == "random":   # the random strategy: query/key rows U(±sqrt(1/D)), query/key biases zeroed
        sd, ref = model.state_dict(), plain.state_dict()
        changed = {k for k in sd if not torch.equal(sd[k], ref[k])}
        assert changed == {"blocks.0.attn.qkv.weight"}   # (timm's query/key biases start at 0 already)
        w = model.blocks[0].attn.qkv.weight.detach()
        assert float(w[:128].abs().max()) <= 64 ** -0.5 and torch.equal(w[128:], plain.blocks[0].attn.qkv.weight[128:])
        assert "timm_init" not in rec
    else:                    # default: the model exactly as timm built it
        assert "weight_init" not in rec["model"]["model_kwargs"] and rec["model"]["family"] == "timm_vit"
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


# --- training ---------------------------------------------------------------------------------------------------
def test_timm_run_trains_writes_files_and_records_the_init(tmp_path):
    res = train(_cfg(tmp_path), log=quiet)
    h = res.history
    assert [r["epoch"] for r in h] == [0, 1, 2] and h[2]["train_loss"] < h[1]["train_loss"]
    out = Path(res.out)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["model"] == NAME and run["init"]["fit"]["argmax_hit"] > 0.95
    assert run["init"]["model"]["flags"]["dim"] == 64
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert "pos_embed" in ckpt["model"] and "blocks.0.attn.qkv.weight" in ckpt["model"]
    assert scores(read_metrics(out / "metrics.jsonl")) == scores(h)


class _Killed(Exception):
    pass


def test_timm_resume_with_mixup_smoothing_and_ema_matches_uninterrupted(tmp_path, monkeypatch):
    extra = dict(epochs=3, mixup=0.8, cutmix=1.0, smoothing=0.1, model_ema=True, model_ema_decay=0.9,
                 init="impulse")
    full = train(_cfg(tmp_path, "full", **extra), log=quiet)
    saves = []
    real_save = loop_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if len(saves) == 1:
            raise _Killed
    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    cfg = _cfg(tmp_path, "cut", **extra)
    with pytest.raises(_Killed):
        train(cfg, log=quiet)
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert set(state["ema"]) == set(state["model"])          # the EMA weights travel with the checkpoint
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    resumed = train(dataclasses.replace(cfg, resume=True), log=quiet)
    assert saves == [1, 2, 3]
    assert scores(resumed.history) == scores(full.history)
    a = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    b = load_checkpoint(Path(full.out) / "checkpoint.pt")
    torch.testing.assert_close(a["ema"], b["ema"], rtol=0, atol=0)
    torch.testing.assert_close(a["model"], b["model"], rtol=0, atol=0)


def test_ema_weights_are_what_is_evaluated(tmp_path, monkeypatch):
    seen = []
    real = loop_mod.evaluate_splits

    def spy(model, *a, **kw):
        seen.append(model)
        return real(model, *a, **kw)
    monkeypatch.setattr(loop_mod, "evaluate_splits", spy)
    train(_cfg(tmp_path, epochs=1, model_ema=True, init="random"), log=quiet)
    assert len(seen) == 2 and all(not m.training for m in seen)
    state = load_checkpoint(Path(tmp_path / "run") / "checkpoint.pt")
    # the evaluated module is the EMA copy, whose weights lag behind the trained ones (decay 0.9998)
    torch.testing.assert_close(seen[-1].state_dict(), state["ema"], rtol=0, atol=0)
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])


def test_mixup_and_smoothing_use_timms_losses():
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    assert loop_mod._criterion(TrainConfig(**TINY)) is torch.nn.functional.cross_entropy
    assert isinstance(loop_mod._criterion(TrainConfig(**TINY, smoothing=0.1)), LabelSmoothingCrossEntropy)
    assert isinstance(loop_mod._criterion(TrainConfig(**TINY, cutmix=1.0)), SoftTargetCrossEntropy)
    m = loop_mod._mixup(TrainConfig(**TINY, mixup=0.8, smoothing=0.1, mixup_mode="elem"), 5)
    assert isinstance(m, Mixup) and m.mixup_alpha == 0.8 and m.label_smoothing == 0.1 and m.mode == "elem"
    assert loop_mod._mixup(TrainConfig(**TINY), 5) is None


def test_variants_can_name_a_timm_model():
    v = parse_variant("model=timm:vit_small_patch16_224,init=mimetic")
    assert v.overrides == {"model": "timm:vit_small_patch16_224", "init": "mimetic"}
    assert v.label == "model=timm:vit_small_patch16_224,init=mimetic"
    v = parse_variant("small:model=timm:vit_small_patch16_224")
    assert v.label == "small" and v.overrides == {"model": "timm:vit_small_patch16_224"}


def test_compare_timm_inits(tmp_path):
    base = TrainConfig(**{**TINY, "epochs": 1, "synthetic_train": 32})
    res = run_compare(base, [parse_variant("random"), parse_variant("impulse")], [0], tmp_path / "cmp", log=quiet,
                      plot=False)
    text = res.table_path.read_text()
    assert "| random | 1 |" in text and "| impulse | 1 |" in text and NAME in text
    rec = json.loads((tmp_path / "cmp" / "impulse" / "seed0" / "run.json").read_text())
    assert rec["config"]["init"] == "impulse" and "fit" in rec["init"]


def test_inspect_a_timm_run(tmp_path):
    train(_cfg(tmp_path, epochs=1), log=quiet)
    res = inspect_run(tmp_path / "run", images=4, log=quiet)
    data = json.loads((tmp_path / "run" / "inspect.json").read_text())
    assert res.picture.is_file() and len(data["heads"]) == 4 and data["kernel_size"] == 3
    offsets = json.loads((tmp_path / "run" / "run.json").read_text())["init"]["offsets"][0]
    for row, off in zip(data["heads"], offsets):
        assert tuple(row["init"]["target_offset"]) == tuple(off)       # offsets from the run's init record
        assert row["map_change"] > 0


# --- one-line refusals --------------------------------------------------------------------------------------
def _error(argv, capsys, *needles):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags, needles", [
    (["--model", "timm:vit_tiny_patch16_2244"], ["timm has no model 'vit_tiny_patch16_2244'",
                                                 "timm:vit_tiny_patch16_224"]),
    (["--model", "timm:resnet18"], ["ResNet, which no init family handles"]),
    (["--model", "timm:"], ["--model must be one of vit, convmixer, timm:<name>"]),
    (["--model", "vitt"], ["--model must be one of vit, convmixer, timm:<name>"]),
    (["--alpha", "0.1"], ["--alpha does not apply to the timm model timm:vit_tiny_patch16_224"]),
    (["--head-dim", "16", "--attention", "plain"], ["--attention --head-dim do not apply"]),
    (["--num-heads", "5"], ["--dim 32 is not divisible by --num-heads 5"]),
    (["--mixup-prob", "0.5"], ["--mixup-prob does not apply without --mixup or --cutmix"]),
    (["--model-ema-decay", "0.99"], ["--model-ema-decay does not apply without --model-ema"]),
    (["--reprob", "0.5"], ["--reprob does not apply to --augment none"]),
    (["--mixup", "0.8", "--batch-size", "15"], ["even batch per process, got 15"]),
    (["--mixup", "0.8", "--batch-size", "64"], ["do not fill one batch of 64"]),
])
def test_bad_timm_settings_are_one_line_errors_before_any_work(tmp_path, capsys, flags, needles):
    out = tmp_path / "run"
    _error(["train", *TINY_FLAGS, *flags, "--out", str(out)], capsys, *needles)
    assert not out.exists()


def test_official_is_a_strategy_not_a_fit_method_of_impulse(tmp_path, capsys):
    _error(["train", "--dataset", "synthetic", "--fit-method", "official", "--out", str(tmp_path / "r")], capsys,
           "--init impulse takes --fit-method closed_form or iterative, got official", "use --init official")


def test_help_says_which_flags_apply_to_timm_models(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse may wrap at a hyphen
    assert "timm:<name>" in text and "--mlp-dim replace the model's own sizes where its family reads them" in text
    assert "each flag is refused where it does not apply" in text
    assert "the model's own init: PyTorch's, timm's or Hugging Face's" in text and "--augment timm" in text
    assert "hf:<vit, deit" in text and "Swin" in text and "MLP-Mixer" in text
