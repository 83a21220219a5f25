"""The last bad inputs of the command line: counts above what the machine and the data allow, output folders that
cannot hold a run, flags that do not apply to the chosen model, one-class data, corrupt images; and the structure
behind them: the ``fit`` flags generated from ``FitSpec`` with the models' defaults, no import circle between the
training config and the model factory.

Every refusal is one line on stderr, exit status 2, before any work (the functions that would do the work are
replaced by ones that fail the test if they are reached) and before any file is written.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from impulse_attn import cli
from impulse_attn.training import TrainConfig, UserError

from conftest import cli_refused, image_tree

PKG = Path(cli.__file__).resolve().parent
# TINY_NO_OFFSETS for inits that place no offsets (random, mimetic), where --kernel-size is refused as not applying
TINY_NO_OFFSETS = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "20", "--image-size", "16",
                   "--dim", "32", "--depth", "1", "--num-heads", "4", "--head-dim", "8", "--mlp-dim", "64",
                   "--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--no-progress"]
TINY = [*TINY_NO_OFFSETS, "--kernel-size", "3"]
FIT_TINY = ["--num-heads", "4", "--grid", "8", "--kernel-size", "3", "--dim", "32", "--head-dim", "8", "--layers", "1",
            "--no-progress"]
HUGE = str(2 ** 70)


class WorkStarted(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Training, comparing, fitting and the demo fail the test if they start."""
    from impulse_attn import demo, fitting
    from impulse_attn.training import compare, loop

    def started(*args, **kwargs):
        raise WorkStarted("the command started its work instead of refusing the input")
    monkeypatch.setattr(loop, "train", started)
    monkeypatch.setattr(compare, "train", started)
    monkeypatch.setattr(fitting, "fit_impulse", started)
    monkeypatch.setattr(fitting.api, "run_fit", started)
    monkeypatch.setattr(demo, "run_demo", started)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


# --- 1. counts: bounded by what the machine and the data allow ----------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--steps", HUGE], "--steps must be an integer in [1, 10000000]"),
    (["--epochs", HUGE], "--epochs must be an integer in [1, 100000]"),
    (["--eval-every", HUGE], "--eval-every must be an integer in [1, 100000]"),
    (["--batch-size", HUGE], "--batch-size must be an integer in [1, 1048576]"),
    (["--eval-batch-size", HUGE], "--eval-batch-size must be an integer in [1, 1048576]"),
    (["--synthetic-train", HUGE], "--synthetic-train"),
    (["--synthetic-test", HUGE], "--synthetic-test"),
    (["--synthetic-classes", "1"], "--synthetic-classes must be an integer in [2, 10]"),
    (["--fit-steps", HUGE, "--fit-method", "iterative"], "--fit-steps must be an integer in [1, 10000000]"),
    (["--patch-size", HUGE], "--patch-size must be an integer in [1, 4096]"),
    (["--grid", HUGE], "--grid must be an integer in [1, 4096]"),
    (["--kernel-size", str(2 ** 70 + 1)], "--kernel-size must be an odd integer in [1, 8191]"),
    (["--per-class", HUGE], "--per-class"),
    (["--dim", str(2 ** 40)], "--dim"),
    (["--depth", str(2 ** 40)], "--depth"),
    (["--mlp-dim", str(2 ** 40)], "--mlp-dim"),
    (["--head-dim", str(2 ** 40)], "--head-dim"),
    (["--num-heads", str(2 ** 40)], "--num-heads"),
    (["--num-workers", str(10 ** 6)], "--num-workers must be an integer in [0, "),
    (["--model", "convmixer", "--num-heads", "8", "--head-dim", "64", "--mlp-dim", "512", "--filters", "box",
      "--box-n", HUGE], "--box-n must be in [1, 9] (k² for --kernel-size 3)"),
])
def test_train_counts_above_their_bound_are_refused_before_any_work(tmp_path, capsys, no_work, flags, needle):
    out = tmp_path / "run"
    cli_refused(["train", *TINY, *flags, "--out", str(out)], capsys, needle)
    assert not out.exists()


def test_a_model_too_large_for_memory_is_refused_by_the_config(monkeypatch):
    monkeypatch.setenv("IMPULSE_ATTN_MEMORY_BUDGET", str(2 ** 30))
    with pytest.raises(UserError, match="--dim 16384, --depth 6, .* needs about .* GiB"):
        TrainConfig(dim=16384, depth=6, mlp_dim=16384).check()
    TrainConfig().check()                                               # the paper's model fits in 1 GiB


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--steps", HUGE], "--steps"),
    (["compare", *TINY, "--seeds", f"0,{2 ** 64}"], "--seeds"),
    (["fit", *FIT_TINY, "--fit-method", "iterative", "--fit-steps", HUGE], "--fit-steps"),
    (["fit", *FIT_TINY, "--dim", str(2 ** 40)], "--dim"),
    (["fit", *FIT_TINY, "--head-dim", str(2 ** 40)], "--head-dim"),
])
def test_other_subcommands_bound_their_counts(tmp_path, capsys, no_work, argv, needle):
    cli_refused([*argv, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


# --- 2. output folders ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["train", *TINY], ["compare", *TINY], ["fit", *FIT_TINY], ["demo"]])
def test_empty_out_is_refused(tmp_path, capsys, no_work, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    cli_refused([*command, "--out", ""], capsys, "--out must name a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs a /proc file system")
@pytest.mark.parametrize("command", [["train", *TINY], ["compare", *TINY], ["fit", *FIT_TINY], ["demo"]])
def test_out_where_no_file_can_be_created_is_refused(capsys, no_work, command):
    # /proc refuses new files even to root, for whom every permission bit says "writable"
    cli_refused([*command, "--out", "/proc/impulse-attn-run"], capsys, "--out /proc/impulse-attn-run cannot be written")


def test_out_with_a_nul_byte_or_a_name_too_long(tmp_path, capsys, no_work):
    cli_refused(["train", *TINY, "--out", str(tmp_path / "a\0b")], capsys, "--out", "NUL")
    cli_refused(["fit", *FIT_TINY, "--out", str(tmp_path / ("x" * 400))], capsys, "--out", "too long")


def test_inspect_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    cli_refused(["inspect", str(tmp_path), "--out", str(f)], capsys, "--out", "is an existing file")
    cli_refused(["inspect", str(tmp_path), "--out", ""], capsys, "--out must name a folder")
    assert f.read_text() == "mine"


# --- 3. the schedule --------------------------------------------------------------------------------------------
def test_min_lr_above_lr_is_refused(tmp_path, capsys, no_work):
    cli_refused(["train", *TINY, "--lr", "0.1", "--min-lr", "1", "--out", str(tmp_path / "r")], capsys,
             "--min-lr 1.0 is above --lr 0.1")
    TrainConfig(lr=0.1, min_lr=0.1).check()                             # a flat schedule is fine


# --- 4. flags that do not apply -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--model", "convmixer"], "--num-heads --mlp-dim --head-dim do not apply to --model convmixer"),
    (["--model", "convmixer", "--num-heads", "8", "--head-dim", "64", "--mlp-dim", "512", "--init", "random"],
     "--init does not apply to --model convmixer"),
    (["--attention", "plain", "--mode", "III"], "--mode does not apply to --attention plain"),
    (["--mode", "II", "--alpha", "0.3"], "--alpha does not apply to --mode II"),
    (["--init", "random", "--fit-method", "iterative"], "--fit-method does not apply to --init random"),
    (["--fit-method", "iterative", "--target-mass", "0.3"], "--target-mass does not apply to --fit-method iterative"),
    (["--fit-steps", "50"], "--fit-steps does not apply to --fit-method closed_form"),
    (["--steps", "10", "--epochs", "5"], "--epochs does not apply with --steps 10"),
    (["--filters", "box"], "--filters does not apply to --model vit"),
    (["--model", "convmixer", "--num-heads", "8", "--head-dim", "64", "--mlp-dim", "512", "--box-n", "3"],
     "--box-n does not apply to --filters learned"),
    (["--synthetic-classes", "3", "--dataset", "cifar10"], "--synthetic-classes do not apply to --dataset cifar10"),
    (["--crop-scale", "0.5"], "--crop-scale does not apply to --augment none"),
])
def test_flags_that_do_not_apply_are_refused(tmp_path, capsys, no_work, flags, needle):
    tiny = TINY_NO_OFFSETS if flags[:2] == ["--init", "random"] else TINY
    cli_refused(["train", *tiny, *flags, "--out", str(tmp_path / "r")], capsys, needle)
    assert not (tmp_path / "r").exists()


def test_the_applicability_table_names_real_fields_and_flags():
    from impulse_attn.training import config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(config.APPLIES) <= names
    for name, rule in config.APPLIES.items():
        assert set(rule.depends) <= names, name
        assert rule.where, name
    # a model default carried by the resolved config is not a flag someone gave
    TrainConfig(model="convmixer").resolved().check()


# Every entry of the table APPLIES, by field: (the flag with a value that is not its default, a command line on which
# it does not apply). Written out here, not derived from the table, so that an entry dropped from the table (or a
# condition loosened) leaves its flag accepted and the test below fails. No entry applies everywhere: each has one.
NOT_APPLYING = {
    "data_dir": (["--data-dir", "elsewhere"], ["--dataset", "synthetic"]),
    "data_seed": (["--data-seed", "3"], ["--dataset", "cifar10"]),
    "crop_scale": (["--crop-scale", "0.5"], ["--augment", "none"]),
    "auto_augment": (["--auto-augment", "rand-m7-mstd0.5"], ["--augment", "paper"]),
    "reprob": (["--reprob", "0.5"], ["--augment", "paper"]),
    "synthetic_train": (["--synthetic-train", "64"], ["--dataset", "cifar10"]),
    "synthetic_test": (["--synthetic-test", "20"], ["--dataset", "cifar10"]),
    "synthetic_classes": (["--synthetic-classes", "3"], ["--dataset", "cifar10"]),
    "model_kwargs": (["--model-kwargs", "depth=2"], []),
    "depth": (["--depth", "2"], ["--model", "timm:swin_tiny_patch4_window7_224", "--image-size", "32",
                                 "--patch-size", "4", "--model-kwargs", "depths=(2,2);num_heads=(2,4);window_size=4"]),
    "num_heads": (["--num-heads", "4"], ["--model", "convmixer"]),
    "mlp_dim": (["--mlp-dim", "64"], ["--model", "convmixer"]),
    "attention": (["--attention", "plain"], ["--model", "convmixer"]),
    "mode": (["--mode", "II"], ["--attention", "plain"]),
    "alpha": (["--alpha", "0.3"], ["--mode", "II"]),
    "scale": (["--scale", "0.5"], ["--model", "convmixer"]),
    "attention_backend": (["--attention-backend", "reference"], ["--model", "convmixer"]),
    "head_dim": (["--head-dim", "16"], ["--model", "convmixer"]),
    "value_init": (["--value-init", "mimetic"], ["--model", "convmixer"]),
    "init": (["--init", "random"], ["--model", "convmixer"]),
    "fit_method": (["--fit-method", "iterative"], ["--init", "random"]),
    "fit_target": (["--fit-target", "impulse"], ["--fit-method", "iterative"]),
    "target_mass": (["--target-mass", "0.3"], ["--fit-method", "iterative"]),
    "fit_offsets": (["--fit-offsets", "cycle"], ["--init", "random"]),
    "kernel_size": (["--kernel-size", "3"], ["--init", "random"]),
    "fit_steps": (["--fit-steps", "50"], ["--fit-method", "closed_form"]),
    "fit_backend": (["--fit-backend", "reference"], ["--fit-method", "closed_form"]),
    "mix_gain": (["--mix-gain", "1.5"], ["--model", "vit"]),
    "window_mass": (["--window-mass", "0.5"], ["--model", "vit"]),
    "position_share": (["--position-share", "0.5"], ["--model", "vit"]),
    "pos_scale": (["--pos-scale", "18"], ["--model", "vit"]),
    "fit_input": (["--fit-input", "data"], ["--model", "vit"]),
    "filters": (["--filters", "box"], ["--model", "vit"]),
    "freeze": (["--freeze"], ["--model", "convmixer", "--filters", "learned"]),
    "box_n": (["--box-n", "3"], ["--model", "convmixer", "--filters", "random"]),
    "epochs": (["--epochs", "5"], ["--steps", "10"]),
    "mixup_prob": (["--mixup-prob", "0.5"], []),
    "mixup_switch_prob": (["--mixup-switch-prob", "0.2"], []),
    "mixup_mode": (["--mixup-mode", "pair"], []),
    "model_ema_decay": (["--model-ema-decay", "0.99"], []),
    "model_ema_warmup": (["--model-ema-warmup"], []),
}
# Refused through the Python API as well (``always``): on every model, or on timm/hf models only.
ALWAYS_REFUSED = {"auto_augment", "reprob", "model_kwargs", "mixup_prob", "mixup_switch_prob", "mixup_mode",
                  "model_ema_decay", "model_ema_warmup"}
REFUSED_FOR_EXTERNAL = {"attention", "mode", "alpha", "scale", "attention_backend", "head_dim", "value_init",
                        "filters", "freeze", "box_n"}


def _applies_entries():
    from impulse_attn.training.config import APPLIES
    return sorted(set(APPLIES) | set(NOT_APPLYING))


def _api_config(argv) -> TrainConfig:
    """The TrainConfig the train command builds from ``argv`` (parsed, not checked)."""
    args = _subparser("train").parse_args(argv)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


@pytest.mark.parametrize("name", _applies_entries())
def test_every_applicability_entry_refuses_its_flag_where_it_does_not_apply(tmp_path, capsys, no_work, name):
    from impulse_attn.training.config import fields_by_name, flag_name
    assert name in NOT_APPLYING, f"APPLIES has a new entry {name!r}: add a command line where it does not apply"
    given, context = NOT_APPLYING[name]
    flag = flag_name(fields_by_name()[name])
    assert given[0] == flag
    out = tmp_path / "r"
    line = cli_refused(["train", *context, *given, "--out", str(out)], capsys, "not apply")
    # "... error: <flags> does/do not apply <where>": this flag, and only it, is named as not applying
    named = line.split("error: ", 1)[1].split(" do")[0].split()
    assert named == [flag], line
    assert not out.exists()
    # the context alone is accepted (the work starts): the refusal was the flag's
    with pytest.raises(WorkStarted):
        cli.main(["train", *context, "--out", str(out)])
    # through the Python API the same setting warns in one line, or is refused where the table says always
    cfg = _api_config([*context, *given])
    if name in ALWAYS_REFUSED:
        with pytest.raises(UserError, match=flag):
            cfg.check()
    else:
        with pytest.warns(UserWarning, match=f"{flag}.* not apply") as got:
            cfg.check()
        assert all("\n" not in str(w.message) for w in got)
    if name in REFUSED_FOR_EXTERNAL:
        external = TrainConfig(model="timm:vit_tiny_patch16_224", **{name: getattr(cfg, name)})   # this flag alone
        with pytest.raises(UserError, match=f"{flag} does not apply to the timm model"):
            external.check()


def test_through_the_api_an_unused_setting_warns_in_one_line():
    cfg = TrainConfig(init="random", fit_method="iterative")
    with pytest.warns(UserWarning, match="--fit-method does not apply to --init random") as got:
        cfg.check()
    assert all("\n" not in str(w.message) for w in got)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig().check()                                           # nothing to say about the defaults


def test_compare_refuses_a_base_flag_no_variant_uses_and_a_variant_flag_its_variant_ignores(tmp_path, capsys,
                                                                                            no_work):
    out = str(tmp_path / "c")
    cli_refused(["compare", *TINY_NO_OFFSETS, "--inits", "random,mimetic", "--fit-method", "iterative", "--out", out],
                capsys, "--fit-method does not apply to any variant")
    cli_refused(["compare", *TINY, "--kernel-size", "3", "--inits", "random,mimetic", "--out", out], capsys,
                "--kernel-size does not apply to any variant")
    cli_refused(["compare", *TINY, "--variants", "init=random,fit_method=iterative", "--out", out], capsys,
             "variant 'init=random,fit_method=iterative'", "--fit-method does not apply to --init random")
    # a base flag that one of the variants uses is fine: the work starts
    with pytest.raises(WorkStarted):
        cli.main(["compare", *TINY, "--inits", "random,impulse", "--fit-method", "iterative", "--out", out])


@pytest.mark.parametrize("reach", ["2", "nan", "-0.1", "inf"])
def test_compare_reach_is_an_accuracy(tmp_path, capsys, no_work, reach):
    cli_refused(["compare", *TINY, "--reach", reach, "--out", str(tmp_path / "c")], capsys,
             "--reach", "a number in [0, 1]")


@pytest.mark.parametrize("flags, needle", [
    (["--fit-steps", "50"], "--fit-steps does not apply to --fit-method closed_form"),
    (["--fit-method", "iterative", "--target-mass", "0.2"], "--target-mass does not apply to --fit-method iterative"),
    (["--fit-method", "iterative", "--fit-target", "impulse"], "--fit-target does not apply to --fit-method iterative"),
])
def test_fit_flags_that_do_not_apply_to_the_method_are_refused(tmp_path, capsys, no_work, flags, needle):
    cli_refused(["fit", *FIT_TINY, *flags, "--out", str(tmp_path / "f")], capsys, needle)


# --- 5. data ------------------------------------------------------------------------------------------------------
def _folder(root: Path, classes, fmt="png"):
    for split in ("train", "test"):
        image_tree(root, split, classes, 3, size=8, fmt=fmt)


def test_a_folder_with_one_class_is_refused(tmp_path, capsys, no_work):
    from impulse_attn.training.data import build_datasets
    _folder(tmp_path / "data", ["only"])
    with pytest.raises(UserError, match="1 class folder .* at least 2"):
        build_datasets(TrainConfig(dataset="folder", data_dir=str(tmp_path / "data")))


def test_a_jpeg_with_zeroed_bytes_inside_is_found_by_the_image_check(tmp_path):
    from impulse_attn.training.data import check_images
    rng = torch.Generator().manual_seed(0)
    pixels = (torch.rand(32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    good = tmp_path / "good.jpg"
    good.write_bytes(data)
    n = len(data)
    data[n // 3:n // 3 + 200] = bytes(200)                            # the end marker is still there
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data)
    check_images([str(good)], "training")
    with pytest.raises(UserError, match="bad.jpg: .*cannot be decoded"):
        check_images([str(good), str(bad)], "training")


# --- 6. inspect ---------------------------------------------------------------------------------------------------
def test_inspect_on_a_folder_that_is_not_a_run_suggests_only_its_own_flags(tmp_path, capsys):
    line = cli_refused(["inspect", str(tmp_path)], capsys, "no checkpoint.pt", "impulse-attn train")
    assert "--resume" not in line
    inspect_flags = {s for a in _subparser("inspect")._actions for s in a.option_strings}
    assert not {w for w in line.replace(",", " ").split() if w.startswith("--")} - inspect_flags - {"--out"}


def test_inspect_images_are_bounded_by_the_evaluation_set(tmp_path):
    from impulse_attn.training.inspect import _eval_images

    class Bundle:
        evals = {"test": [(torch.zeros(3, 4, 4), 0)] * 5}
        primary = "test"
    assert len(_eval_images(Bundle(), 2 ** 70)) == 5


# --- 7. the fit subcommand is generated from FitSpec, with the models' defaults ----------------------------------
def test_every_fit_option_of_fitspec_is_a_flag_of_the_fit_command():
    from impulse_attn.fitting.spec import FitSpec, cli_fields, flag_of
    flags = {s for a in _subparser("fit")._actions for s in a.option_strings}
    exposed = cli_fields()
    assert {f.name for f in exposed} == {f.name for f in dataclasses.fields(FitSpec)} - {"pseudo_input"}
    for f in exposed:
        assert flag_of(f) in flags, f.name
    source = (PKG / "cli.py").read_text()
    assert '"--fit-steps"' not in source and '"--target-mass"' not in source   # not written out by hand


def test_fit_defaults_are_the_models_defaults():
    from impulse_attn.attention import FIT_DEFAULTS
    CLOSED_FORM_DEFAULTS = FIT_DEFAULTS["closed_form"]
    args = _subparser("fit").parse_args([])
    vit = TrainConfig().resolved()
    assert args.alpha == vit.alpha == 0.2
    assert args.target_mass == CLOSED_FORM_DEFAULTS["target_mass"] and args.target == CLOSED_FORM_DEFAULTS["target"]
    assert (args.fit_method, args.steps, args.backend, args.offsets) == (vit.fit_method, vit.fit_steps,
                                                                         vit.fit_backend, vit.fit_offsets)
    assert (args.num_heads, args.kernel_size, args.dim, args.head_dim, args.layers) == (
        vit.num_heads, vit.kernel_size, vit.dim, vit.head_dim, vit.depth)
    assert args.scale == "auto" and args.grid_size == 16


def test_fit_command_reproduces_the_models_impulse_init(tmp_path, capsys):
    from impulse_attn.models import SimpleViT
    assert cli.main(["fit", *FIT_TINY, "--layers", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    model = SimpleViT(image_size=16, patch_size=2, dim=32, depth=2, num_heads=4, head_dim=8, mlp_dim=32,
                      kernel_size=3)
    fit = model.fit_results[0]
    assert report["offsets"] == fit.offsets.tolist()
    assert report["scale"] == pytest.approx(fit.scale)
    assert report["report"]["target_mass"] == pytest.approx(fit.report.target_mass, rel=1e-5)


def test_fit_errors_name_the_flag(tmp_path, capsys, no_work):
    cli_refused(["fit", *FIT_TINY, "--target-mass", "1.5", "--out", str(tmp_path / "f")], capsys, "--target-mass")


# --- 8. no import circle between the training config and the model factory --------------------------------------
def _imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
            names.update(("." * node.level) + a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_config_and_factory_do_not_import_each_other_both_ways():
    config = _imports(PKG / "training" / "config.py")
    factory = _imports(PKG / "training" / "factory.py")
    config_uses_factory = any(n.endswith("factory") for n in config)
    factory_uses_config = any(n.endswith("config") for n in factory)
    assert not (config_uses_factory and factory_uses_config)
    assert not config_uses_factory                       # the settings know nothing of the builder
