"""The training loop: every model and init learns, writes metrics and checkpoints, and resumes exactly."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from impulse_attn.training import TrainConfig, UserError, load_checkpoint, train
from impulse_attn.training import loop as loop_mod
from impulse_attn.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from impulse_attn.training.compare import parse_variant, run_compare, summarize
from impulse_attn.training.loop import TrainResult, cosine_schedule
from impulse_attn.training.metrics import MetricsWriter, read_metrics

from conftest import quiet, run_config, scores, snapshot

REPO = Path(__file__).resolve().parents[1]
# Tiny: an 8x8 token grid, two shapes (bars across and down), 40 steps an epoch; two epochs take about a second.
TINY = dict(dataset="synthetic", synthetic_train=640, synthetic_test=60, synthetic_classes=2, image_size=16,
            patch_size=2, dim=32, depth=1, num_heads=4, head_dim=8, mlp_dim=64, kernel_size=3, epochs=2, batch_size=16,
            lr=3e-3, progress=False)
TINY_CM = dict(TINY, model="convmixer", depth=2, kernel_size=3)
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    return run_config(TINY, tmp_path, name, **kw)




@pytest.mark.parametrize("kw", [
    dict(init="impulse"), dict(init="mimetic"), dict(init="random"), dict(init="default"),
    dict(init="impulse", attention="plain"), dict(init="impulse", mode="II"),
    dict(TINY_CM, filters="learned"), dict(TINY_CM, filters="impulse", freeze=True),
    dict(TINY_CM, filters="random", freeze=True), dict(TINY_CM, filters="box", freeze=True),
], ids=lambda kw: "-".join(str(v) for k, v in kw.items() if k in ("model", "init", "attention", "mode", "filters",
                                                                   "freeze")))
def test_two_epochs_drive_the_loss_down_and_write_files(tmp_path, kw):
    res = train(_cfg(tmp_path, **kw), log=quiet)
    h = res.history
    assert [r["epoch"] for r in h] == [0, 1, 2]
    assert h[2]["train_loss"] < h[1]["train_loss"]
    assert h[2]["test_loss"] < h[0]["test_loss"]                     # learned something that transfers
    out = Path(res.out)
    assert scores(read_metrics(out / "metrics.jsonl")) == scores(h)
    ckpt = load_checkpoint(out / "checkpoint.pt")                     # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["history"][-1]["test_acc"] == h[-1]["test_acc"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_acc"] == h[-1]["test_acc"]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["init"] == kw.get("init", "impulse")
    if kw.get("init") == "impulse" and kw.get("model", "vit") == "vit":
        assert run["init"]["fit"]["argmax_hit"] > 0.5                 # the model really started from a fit


def test_attention_backends_train_alike(tmp_path):
    ref = train(_cfg(tmp_path, "ref", epochs=1, attention_backend="reference"), log=quiet)
    sdpa = train(_cfg(tmp_path, "sdpa", epochs=1, attention_backend="sdpa"), log=quiet)
    for a, b in zip(ref.history, sdpa.history):
        for k in ("train_loss", "test_loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5)


def test_seeded_runs_are_reproducible_and_seeds_differ(tmp_path):
    a = train(_cfg(tmp_path, "a", epochs=1), log=quiet)
    b = train(_cfg(tmp_path, "b", epochs=1), log=quiet)
    c = train(_cfg(tmp_path, "c", epochs=1, seed=1), log=quiet)
    assert scores(a.history) == scores(b.history)
    assert scores(a.history) != scores(c.history)


class _Killed(Exception):
    pass


def test_resume_in_process_matches_uninterrupted(tmp_path, monkeypatch):
    full = train(_cfg(tmp_path, "full", epochs=3, warmup_epochs=1.0, clip_grad=1.0), log=quiet)
    saves = []
    real_save = loop_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if len(saves) == 1:
            raise _Killed
    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    cfg = _cfg(tmp_path, "cut", epochs=3, warmup_epochs=1.0, clip_grad=1.0)
    with pytest.raises(_Killed):
        train(cfg, log=quiet)
    resumed = train(dataclasses.replace(cfg, resume=True), log=quiet)
    assert saves == [1, 2, 3]
    assert scores(resumed.history) == scores(full.history)
    assert scores(read_metrics(Path(cfg.out) / "metrics.jsonl")) == scores(full.history)
    torch.testing.assert_close(load_checkpoint(Path(cfg.out) / "checkpoint.pt")["model"],
                               load_checkpoint(Path(full.out) / "checkpoint.pt")["model"], rtol=0, atol=0)


def _wait_for(predicate, proc, timeout=240.0):
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the first checkpoint")
        time.sleep(0.02)


def test_resume_after_sigkill_mid_epoch_matches_uninterrupted(tmp_path):
    # Long enough epochs (many small steps) that the kill lands inside epoch 2, after the first checkpoint.
    flags = ["--dataset", "synthetic", "--synthetic-train", "480", "--synthetic-test", "60", "--image-size", "16",
             "--patch-size", "2", "--dim", "32", "--depth", "1", "--num-heads", "4", "--head-dim", "8",
             "--mlp-dim", "64", "--kernel-size", "3", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
             "--warmup-epochs", "0.5", "--no-progress"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "impulse_attn.cli", "train", *flags, "--out", str(killed)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    _wait_for(lambda: (killed / "checkpoint.pt").exists() and len(read_metrics(metrics)) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [r["epoch"] for r in read_metrics(metrics)]
    assert proc.returncode == -signal.SIGKILL and done[-1] < 3, f"the run was not killed mid-way: {done}"

    cli = [sys.executable, "-m", "impulse_attn.cli", "train", *flags]
    resumed = subprocess.run([*cli, "--out", str(killed), "--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    straight = subprocess.run([*cli, "--out", str(tmp_path / "straight")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    a, b = read_metrics(metrics), read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["epoch"] for r in a] == [0, 1, 2, 3]
    assert scores(a) == scores(b)


def test_step_budget_and_eval_every(tmp_path):
    # 640 images in batches of 16: 40 steps an epoch; 100 steps = 2 full epochs and 20 steps of a third.
    res = train(_cfg(tmp_path, steps=100, eval_every=2, epochs=50), log=quiet)
    h = res.history
    assert [r["epoch"] for r in h] == [0, 1, 2, 3]
    assert [r["step"] for r in h] == [0, 40, 80, 100]
    assert ["test_acc" in r for r in h] == [True, False, True, True]     # init, every 2nd, and the last epoch
    assert h[-1]["lr"] == pytest.approx(0.0, abs=1e-12)                  # the cosine ends at the budget's end
    summary = json.loads((Path(res.out) / "summary.json").read_text())
    assert summary["steps"] == 100 and summary["epochs"] == 3 and summary["final_acc"] == h[-1]["test_acc"]


def test_folder_data_with_val_selects_on_val_and_reports_test(tmp_path):
    from PIL import Image
    root = tmp_path / "data"
    for split, n in (("train", 12), ("val", 6), ("test", 4)):
        for ci, c in enumerate(("hbar", "vbar")):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (16, 16), (30, 30, 30))
                for j in range(16):
                    img.putpixel((j, 3 + i % 8) if ci == 0 else (3 + i % 8, j), (250, 250, 250))
                img.save(d / f"{i}.png")
    res = train(_cfg(tmp_path, dataset="folder", data_dir=str(root), synthetic_train=1, epochs=2, batch_size=8),
                log=quiet)
    assert res.split == "val" and res.metric == "val_acc"
    assert all("val_acc" in r and "test_acc" in r for r in res.history)
    summary = json.loads((Path(res.out) / "summary.json").read_text())
    assert summary["split"] == "val" and summary["final_acc"] == res.history[-1]["val_acc"]
    assert summary["final"]["test"] == res.history[-1]["test_acc"]


# --- refusing to lose work ------------------------------------------------------------------------------------
def test_existing_run_is_not_overwritten(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    train(cfg, log=quiet)
    before = snapshot(Path(cfg.out))
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(cfg, log=quiet)
    assert snapshot(Path(cfg.out)) == before


def test_mismatched_checkpoint_is_refused_and_kept(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    train(cfg, log=quiet)
    before = snapshot(Path(cfg.out))
    with pytest.raises(UserError, match=r"other settings \(dim: checkpoint 32, now 48\)"):
        train(dataclasses.replace(cfg, dim=48, resume=True), log=quiet)
    with pytest.raises(UserError, match="patch_size: checkpoint 2, now 4"):
        train(dataclasses.replace(cfg, patch_size=4, resume=True), log=quiet)
    assert snapshot(Path(cfg.out)) == before


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    train(cfg, log=quiet)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    before = snapshot(Path(cfg.out))
    with pytest.raises(UserError, match="corrupt"):
        train(dataclasses.replace(cfg, resume=True), log=quiet)
    assert snapshot(Path(cfg.out)) == before


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "impulse-attn-checkpoint", "version": 1, "x": Path("/")}, path)
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        load_checkpoint(path)                                          # weights_only=True refuses arbitrary objects
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an impulse-attn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# --- pieces ---------------------------------------------------------------------------------------------------
def test_atomic_checkpoint_leaves_no_temp_files(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_metrics_reader_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    w = MetricsWriter(path)
    w.append({"epoch": 0})
    w.append({"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "test_a')
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}]
    w.replace([{"epoch": 0}])
    assert read_metrics(path) == [{"epoch": 0}]


def test_cosine_schedule_with_warmup():
    f = cosine_schedule(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)
    g = cosine_schedule(total_steps=10, warmup_steps=0, min_ratio=0.0)
    assert g(0) == 1.0 and all(g(i) > g(i + 1) for i in range(10))


def test_parse_variant():
    assert parse_variant("impulse").overrides == {"init": "impulse"}
    v = parse_variant("init=impulse,alpha=0.1")
    assert v.overrides == {"init": "impulse", "alpha": 0.1} and v.label == "init=impulse,alpha=0.1"
    v = parse_variant("frozen box:model=convmixer,filters=box,freeze=1,box_n=none")
    assert v.label == "frozen box"
    assert v.overrides == {"model": "convmixer", "filters": "box", "freeze": True, "box_n": None}
    with pytest.raises(UserError, match="unknown or fixed field 'colour'"):
        parse_variant("colour=red")
    with pytest.raises(UserError, match="alpha=.high. is not valid"):
        parse_variant("alpha=high")


def test_summary_table_reports_reach_and_mean_std():
    def fake(accs):
        return TrainResult(Path("."), [{"epoch": i, "test_acc": a} for i, a in enumerate(accs)], {"init_seconds": 0.5})
    table, reach = summarize({"fast": [fake([0.1, 0.5, 0.6]), fake([0.1, 0.4, 0.8])],
                              "slow": [fake([0.1, 0.2, 0.55]), fake([0.1, 0.2, 0.65])]})
    assert reach == pytest.approx(0.6)
    fast = next(line for line in table.splitlines() if line.startswith("| fast"))
    slow = next(line for line in table.splitlines() if line.startswith("| slow"))
    assert "70.0 ± 14.1" in fast and "| 2.0 |" in fast
    assert "60.0 ± 7.1" in slow and "2.0 (1/2 seeds)" in slow


def test_compare_writes_table_and_curves_and_reuses_runs(tmp_path):
    base = TrainConfig(**{**TINY, "epochs": 1})
    variants = [parse_variant("random"), parse_variant("impulse")]
    res = run_compare(base, variants, [0], tmp_path / "cmp", log=quiet)
    assert res.table_path.is_file() and res.curves_path.is_file()
    assert "| impulse | 1 |" in res.table_path.read_text()
    mtime = (tmp_path / "cmp" / "impulse" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    again = run_compare(base, variants, [0], tmp_path / "cmp", log=quiet)
    assert again.table == res.table
    assert (tmp_path / "cmp" / "impulse" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match=r"other settings \(lr: there 0.003, now 0.01\)"):
        run_compare(dataclasses.replace(base, lr=0.01), variants, [0], tmp_path / "cmp", log=quiet)
    assert (tmp_path / "cmp" / "impulse" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_model_settings_reach_the_model_by_name(tmp_path):
    # A TrainConfig field named like a SimpleViT parameter is passed on by the factory without code of its own.
    from impulse_attn.training.factory import build_model
    cfg = _cfg(tmp_path, value_init="mimetic", fit_offsets="cycle", num_heads=9, kernel_size=3)
    model, _ = build_model(cfg, 2, 16)
    layer = model.attention_layers()[0]
    a = (layer.to_out.weight @ layer.to_v.weight).T.detach()
    assert float(torch.diagonal(a).mean()) < -0.1                      # the mimetic value/projection
    assert sorted(map(tuple, layer.impulse_offsets.tolist())) == [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    assert model.fit_results[0].report.extra["target"] == "laplace"   # the model's default target
