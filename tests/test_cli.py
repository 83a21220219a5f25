"""The impulse-attn command: flags and their published defaults, subcommands, and one-line errors for bad input."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from impulse_attn import cli
from impulse_attn.training import TrainConfig

from conftest import image_tree

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "20", "--image-size", "16",
        "--dim", "32", "--depth", "1", "--num-heads", "4", "--head-dim", "8", "--mlp-dim", "64", "--kernel-size", "3",
        "--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


# --- flags ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train", "compare", "fit", "inspect", "demo"])
def test_every_flag_has_help_showing_its_default(name):
    sub = _subparser(name)
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # a required positional: it has help but no default
            assert action.help
            continue
        assert action.help, f"{action.option_strings} has no help text"
        assert "(default:" in formatter._get_help_string(action), action.option_strings
    if name == "train":
        text = " ".join(sub.format_help().split())
        assert "training epochs, at most 100000 (default: 200)" in text and "peak learning rate (default: 0.0001)" in text


def test_train_defaults_are_the_published_protocol():
    args = _subparser("train").parse_args([])
    c = cli._config_from_args(args, out=args.out, resume=args.resume).resolved()
    assert (c.dim, c.depth, c.num_heads, c.head_dim, c.mlp_dim, c.patch_size) == (512, 6, 8, 64, 512, 2)
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs, c.batch_size) == ("adam", 1e-4, 0.0, 200, 512)
    assert (c.mode, c.alpha, c.init, c.kernel_size, c.dataset, c.augment) == ("I", 0.2, "impulse", 5, "cifar10",
                                                                              "none")
    assert c.amp == "auto" and c.warmup_epochs == 0 and c.clip_grad == 0
    assert set(vars(args)) - {"func", "no_progress"} <= {f for f in TrainConfig.__dataclass_fields__}


def test_convmixer_defaults():
    args = _subparser("train").parse_args(["--model", "convmixer"])
    c = cli._config_from_args(args, out=args.out, resume=args.resume).resolved()
    assert (c.dim, c.depth, c.kernel_size, c.filters, c.freeze) == (256, 8, 3, "learned", False)


# --- subcommands ----------------------------------------------------------------------------------------------
def test_train_and_resume_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(["train", *TINY, "--out", str(out)], capsys)
    assert code == 0 and "final test accuracy" in stdout
    assert {p.name for p in out.iterdir()} >= {"metrics.jsonl", "checkpoint.pt", "run.json", "summary.json"}
    before = (out / "metrics.jsonl").read_text()
    code, stdout, _ = _run(["train", *TINY, "--out", str(out), "--resume"], capsys)
    assert code == 0 and (out / "metrics.jsonl").read_text() == before


def test_fit_writes_report_and_picture(tmp_path, capsys):
    # a sharp impulse target on the encoding alone (the fit's defaults are a model's: α 0.2, a soft Laplace map)
    code, stdout, _ = _run(["fit", "--num-heads", "4", "--grid", "8", "--kernel-size", "3", "--dim", "32",
                            "--head-dim", "8", "--layers", "1", "--alpha", "0", "--fit-target", "impulse",
                            "--target-mass", "0.3", "--out", str(tmp_path)], capsys)
    assert code == 0 and "argmax hit" in stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["report"]["argmax_hit"] > 0.9 and len(report["offsets"][0]) == 4
    png = (tmp_path / "fit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_compare_writes_table(tmp_path, capsys):
    code, stdout, _ = _run(["compare", *TINY, "--inits", "random,impulse", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "| random | 1 |" in stdout and "| impulse | 1 |" in stdout
    assert (tmp_path / "results.md").is_file() and (tmp_path / "curves.png").is_file()


def _image_folder(root, per_class=4, size=16):
    for split, n in (("train", per_class), ("val", 2), ("test", 2)):
        image_tree(root, split, ["c0", "c1", "c2"], n, size=size)


def test_demo_prints_table_verdict_and_paths(tmp_path, capsys, monkeypatch):
    # The real demo takes minutes; the same code path at a tiny size, on an image folder.
    from impulse_attn import demo
    monkeypatch.setattr(demo, "PER_CLASS", 3)
    monkeypatch.setitem(demo.MODEL, "dim", 16)
    monkeypatch.setitem(demo.MODEL, "depth", 1)
    monkeypatch.setitem(demo.BUDGET, "batch_size", 3)
    _image_folder(tmp_path / "data")
    code, stdout, _ = _run(["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--data-dir",
                            str(tmp_path / "data"), "--no-progress"], capsys)
    assert code == 0
    for label in demo.INITS:
        assert f"| {label} | 2 |" in stdout                 # two seeds
    assert "3 images per class" in stdout and ("ahead of random" in stdout or "behind random" in stdout or
                                               "level within" in stdout)
    assert "closed-form fit of the paper's model" in stdout
    for name in ("results.md", "curves.png", "fit.png"):
        assert str(tmp_path / "demo" / name) in stdout and (tmp_path / "demo" / name).is_file()


def test_demo_data_falls_back_to_the_built_in_shapes_and_says_so(tmp_path, monkeypatch):
    from impulse_attn import demo
    from impulse_attn.training import data as data_mod
    monkeypatch.setattr(demo, "SHARED_DATA", tmp_path / "absent")

    def no_network(*args, **kwargs):
        raise data_mod.UserError("could not load cifar10 (no network)", "connect once")
    monkeypatch.setattr(data_mod, "_torchvision_datasets", no_network)
    said = []
    fields, where = demo._data(None, said.append)
    assert fields["dataset"] == "synthetic" and where == "the built-in shapes dataset"
    assert len(said) == 1 and "does not help" in said[0]
    with pytest.raises(Exception, match="does not exist"):
        demo._data(str(tmp_path / "nope"), said.append)


# --- bad input: one line, exit 2, no traceback, nothing lost ---------------------------------------------------
def _one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_dataset(tmp_path, capsys):
    code, _, err = _run(["train", "--dataset", "imagenet5", "--out", str(tmp_path / "r")], capsys)
    _one_line_error(code, err, "--dataset: invalid choice: 'imagenet5'", "synthetic")
    assert not (tmp_path / "r").exists()


def test_missing_and_empty_data_dir(tmp_path, capsys):
    code, _, err = _run(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "nope")], capsys)
    _one_line_error(code, err, "does not exist", "--data-dir")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "a").mkdir(parents=True)
    code, _, err = _run(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "empty")], capsys)
    _one_line_error(code, err, "holds no images")


def test_image_size_not_divisible_by_patch(tmp_path, capsys):
    code, _, err = _run(["train", *TINY, "--image-size", "30", "--patch-size", "4", "--out", str(tmp_path)], capsys)
    _one_line_error(code, err, "image size 30 is not divisible by patch size 4", "--patch-size")


def test_grid_that_does_not_match_the_model(tmp_path, capsys):
    code, _, err = _run(["train", *TINY, "--grid", "4", "--out", str(tmp_path)], capsys)
    _one_line_error(code, err, "--grid 4 does not match the model", "--patch-size 4")


def test_bad_flag_value_is_one_line(capsys):
    code, _, err = _run(["train", "--init", "xavier"], capsys)
    _one_line_error(code, err, "invalid choice: 'xavier'")


@pytest.mark.parametrize("damage", ["corrupt", "mismatch"])
def test_bad_checkpoint_keeps_files(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert _run(["train", *TINY, "--out", str(out)], capsys)[0] == 0
    if damage == "corrupt":
        (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
        extra, needle = [], "corrupt"
    else:
        extra, needle = ["--dim", "48"], "other settings (dim: checkpoint 32, now 48)"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _run(["train", *TINY, *extra, "--out", str(out), "--resume"], capsys)
    _one_line_error(code, err, needle)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_rerun_without_resume_keeps_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *TINY, "--out", str(out)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _run(["train", *TINY, "--out", str(out)], capsys)
    _one_line_error(code, err, "already holds a run", "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_errors_through_the_real_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "impulse_attn.cli", "train", "--dataset", "folder", "--data-dir",
                        str(tmp_path / "missing")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    _one_line_error(r.returncode, r.stderr, "impulse-attn train: error: data directory")
