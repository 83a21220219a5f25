"""Bad input at the family boundary: the family that maps the command line's flags to a model's arguments checks
them. Every case is refused in one line before any work (and leaves no --out), or works as the help says."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import impulse_attn as ia
from impulse_attn import cli

from conftest import cli_refused, image_tree

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SYN = ["--dataset", "synthetic", "--synthetic-train", "20", "--synthetic-test", "10", "--synthetic-classes", "2",
       "--image-size", "16", "--patch-size", "4", "--steps", "1", "--batch-size", "10", "--no-progress"]
TIMM = ["--model", "timm:vit_tiny_patch16_224", "--dim", "32", "--depth", "1", "--num-heads", "4", "--mlp-dim", "32"]
SWIN = ["--model", "timm:swin_tiny_patch4_window7_224", "--dim", "16"]


@pytest.mark.parametrize("argv, needles", [
    # --model-kwargs that contradict a flag or the data
    (TIMM + ["--model-kwargs", "depth=2"], ["--model-kwargs sets depth=2 but --depth 1 sets depth=1"]),
    (TIMM + ["--model-kwargs", "patch_size=8"], ["sets patch_size=8 but --patch-size 4"]),
    (TIMM + ["--model-kwargs", "num_classes=7"], ["sets num_classes=7 but the data's num classes 2"]),
    (TIMM + ["--model-kwargs", "img_size=32"], ["sets img_size=32 but the data's image size 16"]),
    (TIMM + ["--model-kwargs", "in_chans=1"], ["sets in_chans=1 but the data's channels 3"]),
    (TIMM + ["--model-kwargs", "embed_dim=64"], ["sets embed_dim=64 but --dim 32"]),
    (["--model", "hf:vit", "--dim", "32", "--num-heads", "4", "--model-kwargs", "hidden_size=64"],
     ["sets hidden_size=64 but --dim 32"]),
    # a Swin window that does not tile the grid; heads for fewer stages than depths
    (SWIN + ["--model-kwargs", "depths=(2,);num_heads=(2,);window_size=3"], ["window 3x3 does not tile"]),
    (SWIN + ["--model-kwargs", "depths=(2,2);num_heads=(2,);window_size=2"], ["depths for 2 stages and num_heads for 1"]),
    # models no family handles, and bad values inside --model-kwargs
    (["--model", "timm:resmlp_12_224"], ["ResBlock blocks (ResMLP/gMLP), not MixerBlock"]),
    (["--model", "timm:gmlp_ti16_224"], ["not MixerBlock"]),
    (["--model", "hf:vit", "--model-kwargs", "hidden_size='abc'"], ["hidden_size='abc' must be a positive integer"]),
    (TIMM + ["--model-kwargs", "x=" + "9" * 100_000], ["--model-kwargs must be at most"]),
    # settings the model or init would ignore
    (["--model", "timm:mixer_s16_224", "--num-heads", "2"], ["--num-heads does not apply"]),
    (["--model", "timm:mixer_s16_224", "--target-mass", "0.3"], ["--target-mass does not apply"]),
    (SWIN + ["--fit-method", "iterative", "--model-kwargs", "depths=(2,);num_heads=(2,);window_size=2"],
     ["--fit-method does not apply"]),
    (["--init", "random", "--kernel-size", "3"], ["--kernel-size does not apply to --init random"]),
    (["--fit-method", "iterative", "--fit-backend", "cuda"], ["--fit-backend cuda cannot run here"]),
    (TIMM + ["--fit-method", "official"], ["--init impulse takes --fit-method closed_form or iterative"]),
])
def test_bad_model_settings_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, needles):
    if "--fit-backend" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is here: the cuda backend may run")
    out = tmp_path / "run"
    cli_refused(["train", *SYN, *argv, "--out", str(out)], capsys, *needles)
    assert not out.exists()


def test_a_distilled_deit_is_a_timm_vit_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", *SYN, "--model", "timm:deit_tiny_distilled_patch16_224", "--dim", "32", "--depth", "1",
                     "--num-heads", "4", "--mlp-dim", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()


def test_compare_refuses_inits_and_variants_together(tmp_path, capsys):
    cli_refused(["compare", *SYN, "--inits", "impulse", "--variants", "init=random", "--out", str(tmp_path / "c")],
                capsys, "--inits and --variants both say what to compare")


def test_compare_names_an_unknown_model_in_a_variant(tmp_path, capsys):
    line = cli_refused(["compare", *SYN, "--variants", "model=timm:nonexistent_zz", "--out", str(tmp_path / "c")],
                       capsys, "timm has no model 'nonexistent_zz'")
    assert "--head-dim" not in line


def test_fit_refuses_logit_scale_with_target_mass(tmp_path, capsys):
    cli_refused(["fit", "--fit-method", "closed_form", "--logit-scale", "2", "--target-mass", "0.3", "--out",
                 str(tmp_path / "f")], capsys, "--logit-scale", "--target-mass", "give one of them")


def test_inspect_of_a_file_says_it_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("not a run")
    cli_refused(["inspect", str(f)], capsys, "is a file, not a run folder")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_a_class_folder_that_is_a_link_loop_is_refused(tmp_path, capsys):
    image_tree(tmp_path, "train", ["a"], 2)
    image_tree(tmp_path, "test", ["a", "b"], 1)
    os.symlink(tmp_path / "train" / "b", tmp_path / "train" / "b")
    cli_refused(["train", "--dataset", "folder", "--data-dir", str(tmp_path), "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "run")], capsys, "cannot be read", "symbolic links")
    assert not (tmp_path / "run").exists()


# --- the Python API ---------------------------------------------------------------------------------------------
def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
                             window_size=4, embed_dim=16, depths=(2,), num_heads=(2,), num_classes=3)


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                             depth=1, num_heads=4, num_classes=3)


def _mixer():
    from timm.models.mlp_mixer import MlpMixer
    return MlpMixer(img_size=32, patch_size=4, embed_dim=16, num_blocks=1, num_classes=3)


@pytest.mark.parametrize("build", [_vit, _swin, _mixer])
@pytest.mark.parametrize("images, needle", [
    (torch.zeros(2, 3, 16, 16), "images must have shape (batch >= 1, 3, 32, 32)"),
    (torch.zeros(2, 1, 32, 32), "images must have shape (batch >= 1, 3, 32, 32)"),
    (torch.zeros(0, 3, 32, 32), "images must have shape"),
    (torch.zeros(3, 32, 32), "images must have shape"),
])
def test_attention_maps_of_bad_images_is_one_clear_error(build, images, needle):
    with pytest.raises(ValueError) as e:
        ia.attention_maps(build(), images)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_swin_window_that_does_not_tile_its_grid_is_refused_by_init():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
                              window_size=3, embed_dim=16, depths=(2,), num_heads=(2,), num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="window 3x3 does not tile"):
        ia.init_(model, "impulse")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fit_impulse_with_an_unavailable_backend_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(ValueError, match="backend 'cuda' cannot run here"):
        ia.fit_impulse(2, 4, 3, 16, 8, backend="cuda", steps=2)


def test_init_of_a_meta_device_model_is_a_clear_error():
    with torch.device("meta"):
        model = ia.SimpleViT(image_size=16, patch_size=4, dim=16, depth=1, num_heads=2, head_dim=8, mlp_dim=16,
                             init="default")
    with pytest.raises(ValueError, match="meta device"):
        ia.init_(model, "impulse")


def test_a_closed_form_fit_that_peaks_on_its_target_is_not_called_uniform(recwarn):
    res = ia.fit_impulse(4, 4, 3, 16, 8, fit_method="closed_form", target_mass=0.1)
    assert res.report.argmax_hit == 1.0
    assert not [w for w in recwarn if "no better than a uniform" in str(w.message)]
