"""Bad input a user can type or leave on disk: one clear line and exit status 2, before any work, files kept."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from impulse_attn import cli
from impulse_attn.training import TrainConfig, UserError, load_checkpoint, train
from impulse_attn.training.checkpoint import REQUIRED, save_checkpoint

from conftest import cli_refused, image_tree

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "20", "--image-size", "16",
        "--dim", "32", "--depth", "1", "--num-heads", "4", "--head-dim", "8", "--mlp-dim", "64", "--kernel-size", "3",
        "--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- flag values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--crop-scale", "2"], "--crop-scale must be a number in (0, 1]"),
    (["--crop-scale", "-1"], "--crop-scale must be a number in (0, 1]"),
    (["--num-workers", "-1"], "--num-workers must be an integer in [0, "),
    (["--seed", str(2 ** 70)], "--seed must be an integer in [0, 2**63 - 1]"),
    (["--seed", "-3"], "--seed must be an integer in [0, 2**63 - 1]"),
    (["--image-size", "100000"], "--image-size must be an integer in [1, 4096]"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--alpha", "1.5"], "--alpha must be a number in [0, 1]"),
    (["--kernel-size", "4"], "--kernel-size must be an odd integer in [1, 8191]"),
    (["--kernel-size", "99"], "--kernel-size 99 is wider than a 8x8 token grid allows"),
    (["--epochs", "0"], "--epochs must be an integer in [1, 100000]"),
    (["--dim", "abc"], "argument --dim: 'abc' is not an integer"),
    (["--target-mass", "1"], "--target-mass must be a number in (0, 1)"),
])
def test_bad_values_are_one_line_before_any_file(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    cli_refused(["train", *TINY, *flags, "--out", str(out)], capsys, needle)
    assert not out.exists()


def test_compare_needs_a_seed(tmp_path, capsys):
    cli_refused(["compare", *TINY, "--seeds", ",", "--out", str(tmp_path / "c")], capsys, "names no seed")
    cli_refused(["compare", *TINY, "--seeds", "1,1", "--out", str(tmp_path / "c")], capsys, "repeats a seed")


def test_triton_on_a_cpu_without_the_interpreter_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "impulse_attn.cli", "train", *TINY, "--attention-backend", "triton",
                        "--device", "cpu", "--out", str(tmp_path / "r")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--attention-backend triton cannot run on cpu" in lines[0] and "auto" in lines[0]
    assert not (tmp_path / "r").exists()


# --- the output folder ------------------------------------------------------------------------------------------
def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    cli_refused(["train", *TINY, "--out", str(f)], capsys, "is an existing file")
    cli_refused(["train", *TINY, "--out", str(f / "run")], capsys, "which is a file")
    assert f.read_text() == "mine"


def test_out_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    from impulse_attn.training import loop
    ro = tmp_path / "ro"
    ro.mkdir()
    # root may write anywhere, so the permission answer is planted: what is tested is that it is asked first
    real = os.access
    monkeypatch.setattr(loop.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    cli_refused(["train", *TINY, "--out", str(ro / "run")], capsys, "cannot be written", str(ro))
    assert not (ro / "run").exists()


def test_resume_of_nothing_is_refused(tmp_path, capsys):
    cli_refused(["train", *TINY, "--out", str(tmp_path / "none"), "--resume"], capsys, "holds no run to continue")
    assert not (tmp_path / "none").exists()


def test_a_folder_with_only_the_run_record_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"mine": 1}')
    (out / "summary.json").write_text('{"mine": 2}')
    before = _snapshot(out)
    cli_refused(["train", *TINY, "--out", str(out)], capsys, "already holds a run", "run.json")
    assert _snapshot(out) == before


# --- checkpoints ------------------------------------------------------------------------------------------------
@pytest.fixture
def finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def _rewrite_payload(path: Path, change) -> None:
    """Change the checkpoint's inner state but keep its stored checksum (as a flipped bit on disk would)."""
    outer = torch.load(path, weights_only=True)
    data = bytearray(outer["payload"].numpy().tobytes())
    change(data)
    outer["payload"] = torch.frombuffer(data, dtype=torch.uint8)
    torch.save(outer, path)


def test_flipped_bit_in_a_weight_is_refused_and_kept(finished_run, capsys):
    ckpt = finished_run / "checkpoint.pt"
    state = load_checkpoint(ckpt, REQUIRED)
    w = state["model"]["head.weight"]
    raw = io.BytesIO()
    torch.save(state, raw)

    def flip(data):
        # find the head weight's bytes in the serialized state and flip one bit of them
        needle = w.contiguous().numpy().tobytes()[:16]
        at = bytes(data).find(needle)
        assert at > 0
        data[at + 3] ^= 0x10
    _rewrite_payload(ckpt, flip)
    before = _snapshot(finished_run)
    cli_refused(["train", *TINY, "--out", str(finished_run), "--resume"], capsys, "SHA-256 does not match")
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("damage, needle", [
    (lambda s: s.pop("optimizer"), "incomplete (no 'optimizer')"),
    (lambda s: s.__setitem__("epoch", "3"), "damaged ('epoch' is a str, expected int)"),
    (lambda s: s.__setitem__("rng", {"torch": 1}), "damaged"),
])
def test_checkpoint_missing_a_key_or_with_a_wrong_type(finished_run, capsys, damage, needle):
    ckpt = finished_run / "checkpoint.pt"
    state = load_checkpoint(ckpt, REQUIRED)
    damage(state)
    save_checkpoint(ckpt, state)
    before = _snapshot(finished_run)
    cli_refused(["train", *TINY, "--out", str(finished_run), "--resume"], capsys, needle)
    assert _snapshot(finished_run) == before


def test_truncated_checkpoint_file(finished_run, capsys):
    ckpt = finished_run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    cli_refused(["train", *TINY, "--out", str(finished_run), "--resume"], capsys, "corrupt")


# --- image folders ----------------------------------------------------------------------------------------------
def _folder(root: Path) -> None:
    image_tree(root, "train", ["a", "b"], 3, size=8, fmt="jpg")
    image_tree(root, "test", ["a", "b"], 2, size=8, fmt="jpg")


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "runcated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), "truncated (no end marker)"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "not an image"),
])
def test_bad_image_in_a_folder_is_named_before_anything_is_written(tmp_path, capsys, damage, needle):
    _folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "b" / "001.jpg"
    damage(bad)
    out = tmp_path / "run"
    line = cli_refused(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--dim", "32", "--depth",
                   "1", "--num-heads", "2", "--head-dim", "8", "--mlp-dim", "32", "--kernel-size", "3", "--patch-size",
                   "2", "--epochs", "1", "--out", str(out), "--no-progress"], capsys, needle)
    assert str(bad) in line
    assert not out.exists()


def test_resumed_run_with_an_unreadable_config_keeps_its_files(finished_run, capsys):
    ckpt = finished_run / "checkpoint.pt"
    state = load_checkpoint(ckpt, REQUIRED)
    state["config"] = {"not_a_setting": 1}
    save_checkpoint(ckpt, state)
    before = _snapshot(finished_run)
    with pytest.raises(UserError, match="no readable run settings"):
        train(TrainConfig(**{"dataset": "synthetic", "out": str(finished_run), "resume": True}), log=lambda s: None)
    assert _snapshot(finished_run) == before


# --- the Python API ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf")])
def test_sincos_temperature(temperature):
    from impulse_attn import sincos_2d
    with pytest.raises(ValueError, match="temperature"):
        sincos_2d(4, 16, temperature=temperature)


@pytest.mark.parametrize("fit_kwargs, needle", [
    ({"noise_std": float("nan")}, "noise_std"), ({"pinv_rtol": 2.0}, "pinv_rtol"),
    ({"logit_scale": -1.0}, "logit_scale"), ({"renorm_every": 2 ** 31}, "renorm_every"),
    ({"scale": 0.5}, "must not set 'scale'"),
])
def test_bad_fit_arguments_through_a_layer(fit_kwargs, needle):
    from impulse_attn import ImpulseAttention
    with pytest.raises(ValueError, match=needle):
        ImpulseAttention(32, num_heads=2, head_dim=8, grid_size=4, kernel_size=3, fit_kwargs=fit_kwargs,
                         fit_method="iterative" if "renorm_every" in fit_kwargs else "closed_form")


def test_batch_of_zero_everywhere():
    from impulse_attn import ConvMixer, ImpulseAttention, SimpleViT
    for mode in ("I", "II", "III"):
        layer = ImpulseAttention(32, num_heads=2, head_dim=8, grid_size=(3, 5), kernel_size=3, mode=mode)
        assert layer(torch.randn(0, 15, 32)).shape == (0, 15, 32)
    vit = SimpleViT(image_size=8, patch_size=2, dim=16, depth=1, num_heads=2, head_dim=8, mlp_dim=8, kernel_size=3)
    assert vit(torch.randn(0, 3, 8, 8)).shape == (0, 10)
    cm = ConvMixer(image_size=8, patch_size=2, dim=8, depth=1).eval()
    assert cm(torch.randn(0, 3, 8, 8)).shape == (0, 10)


def test_the_attention_subpackage_is_not_shadowed_and_defaults_to_auto():
    import inspect

    import impulse_attn
    import impulse_attn.attention as attention_pkg
    assert inspect.ismodule(attention_pkg) and attention_pkg.ATTENTION_BACKENDS[0] == "auto"
    assert inspect.signature(attention_pkg.attention).parameters["backend"].default == "auto"
    assert inspect.signature(impulse_attn.fit_impulse).parameters["backend"].default == "auto"
