"""What a run leaves on disk and reads back: the fit cache's checksum, stale temporary files after a kill, a
checkpoint whose checksum is valid but whose values cannot belong to the run, and the shape of the loop."""
from __future__ import annotations

import ast
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from impulse_attn import fit_impulse
from impulse_attn.training import TrainConfig, UserError, load_checkpoint, train
from impulse_attn.training import loop as loop_mod
from impulse_attn.training.checkpoint import save_checkpoint
from impulse_attn.training.errors import DamagedCheckpoint
from impulse_attn.training.metrics import read_metrics

from conftest import quiet, run_config, snapshot

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
SMALL = dict(num_heads=3, grid_size=(5, 6), kernel_size=3, dim=32, head_dim=8, steps=20, lr=1e-3, scale=0.5, seed=1,
             backend="reference", warn=False)
# 640 images in batches of 16: 40 steps an epoch
TINY = dict(dataset="synthetic", synthetic_train=640, synthetic_test=60, synthetic_classes=2, image_size=16,
            patch_size=2, dim=32, depth=1, num_heads=4, head_dim=8, mlp_dim=64, kernel_size=3, epochs=2, batch_size=16,
            lr=3e-3, progress=False, init="random")


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the fit cache --------------------------------------------------------------------------------------------
def _entry(folder: Path) -> Path:
    (path,) = [p for p in folder.iterdir() if p.suffix == ".pt"]
    return path


def test_flipped_sign_bit_in_a_cached_q_is_refitted_not_served(tmp_path, caplog):
    good = fit_impulse(**SMALL, cache_dir=tmp_path)
    path = _entry(tmp_path)
    raw = bytearray(path.read_bytes())
    q_bytes = good.q.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(q_bytes)
    assert at >= 0 and raw.find(q_bytes, at + 1) < 0            # the stored Q, uncompressed, once
    raw[at + 3] ^= 0x80                                          # sign bit of the first float32 (little-endian)
    path.write_bytes(bytes(raw))
    flipped = torch.load(path, weights_only=True)                # torch itself does not notice
    assert flipped["tensors"]["q"].view(-1)[0] == -good.q.view(-1)[0]

    with caplog.at_level(logging.WARNING, logger="impulse_attn"):
        again = fit_impulse(**SMALL, cache_dir=tmp_path)
    assert again.report.extra["cache"].startswith("corrupt")
    assert torch.equal(again.q, good.q) and torch.equal(again.k, good.k)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "cache" in r.getMessage()]
    assert len(warnings) == 1 and "refitting" in warnings[0].getMessage()
    assert fit_impulse(**SMALL, cache_dir=tmp_path).report.extra["cache"] == "hit"   # rewritten, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_cache_entry_checksum_covers_meta(tmp_path):
    fit_impulse(**SMALL, cache_dir=tmp_path)
    path = _entry(tmp_path)
    entry = torch.load(path, weights_only=True)
    entry["meta"]["steps_done"] = entry["meta"]["steps_done"] + 1
    torch.save(entry, path)
    assert fit_impulse(**SMALL, cache_dir=tmp_path).report.extra["cache"].startswith("corrupt")


# --- stale temporary files ------------------------------------------------------------------------------------
def _killed_mid_write(target: Path, sig: int) -> int:
    """A process that dies by ``sig`` inside ``atomic_write_bytes(target)``; returns its (now dead) pid."""
    code = ("import os, signal, sys, time\nfrom pathlib import Path\n"
            "from impulse_attn.training.checkpoint import atomic_write_bytes\n"
            "def write(f):\n    f.write(b'half a file')\n    f.flush()\n"
            f"    os.kill(os.getpid(), {int(sig)})\n    time.sleep(30)\n"
            "atomic_write_bytes(Path(sys.argv[1]), write)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, env=ENV)
    assert proc.wait(timeout=60) == -sig
    assert (target.parent / f".{target.name}.tmp-{proc.pid}").is_file()
    return proc.pid


def _first_epoch_only(tmp_path, monkeypatch, **kw) -> TrainConfig:
    class Killed(Exception):
        pass
    real_save = loop_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise Killed
    cfg = run_config(TINY, tmp_path, **kw)
    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(cfg, log=quiet)
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)
    return cfg


def test_resume_removes_its_own_stale_temp_files_and_nothing_else(tmp_path, monkeypatch):
    cfg = _first_epoch_only(tmp_path, monkeypatch)
    out = Path(cfg.out)
    dead_ckpt = _killed_mid_write(out / "checkpoint.pt", signal.SIGKILL)
    dead_metrics = _killed_mid_write(out / "metrics.jsonl", signal.SIGTERM)
    own = out / f".summary.json.tmp-{os.getpid()}"               # an earlier process that had this pid
    own.write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        keep = {f".checkpoint.pt.tmp-{live.pid}": b"another process writing now",
                ".notes.txt.tmp-1": b"not a run file", f"checkpoint.pt.tmp-{dead_ckpt}": b"no leading dot",
                ".checkpoint.pt.tmp-12ab": b"not a pid", "notes.txt": b"the user's"}
        for name, data in keep.items():
            (out / name).write_bytes(data)
        (out / f".run.json.tmp-{dead_ckpt}").mkdir()                # a folder, not a temporary file
        res = train(dataclasses.replace(cfg, resume=True), log=quiet)
    finally:
        live.kill()
        live.wait()
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    names = {p.name for p in out.iterdir()}
    assert names == {"checkpoint.pt", "metrics.jsonl", "run.json", "summary.json", *keep,
                     f".run.json.tmp-{dead_ckpt}"}
    assert all((out / n).read_bytes() == d for n, d in keep.items())
    assert not (out / f".metrics.jsonl.tmp-{dead_metrics}").exists()


def test_a_new_run_in_a_folder_of_stale_temp_files_cleans_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = _killed_mid_write(out / "checkpoint.pt", signal.SIGKILL)
    train(run_config(TINY, tmp_path, epochs=1), log=quiet)
    assert not (out / f".checkpoint.pt.tmp-{dead}").exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "run.json", "summary.json"]


# --- a checkpoint with a valid checksum and impossible values -------------------------------------------------
def _steps(state, n):
    state["history"][-1]["step"] = n


def _scheduler_step(state, n):
    state["scheduler"]["last_epoch"] = n


def _history_extra(state):
    state["history"].append(dict(state["history"][-1], epoch=2))


def _history_gap(state):
    state["history"][0]["epoch"] = 5


def _world(state):
    state["world_size"], state["rng_ranks"] = 2, [state["rng"]]


BAD_STATES = {
    "empty-history": (lambda s: s.__setitem__("history", []), "history"),
    "negative-epoch": (lambda s: s.__setitem__("epoch", -3), "epoch -3"),
    "zero-epoch": (lambda s: s.__setitem__("epoch", 0), "epoch 0"),
    "huge-epoch": (lambda s: s.__setitem__("epoch", 10 ** 9), "epoch 1000000000"),
    "step-beyond-total": (lambda s: _steps(s, 10 ** 6), "step 1000000"),
    "step-short": (lambda s: _steps(s, 7), "step 7"),
    "scheduler-beyond-total": (lambda s: _scheduler_step(s, 10 ** 6), "scheduler"),
    "history-longer-than-epoch": (_history_extra, "history"),
    "history-epochs-out-of-order": (_history_gap, "history"),
    "history-record-not-a-dict": (lambda s: s["history"].__setitem__(1, [1, 2]), "history"),
    "rng-ranks-vs-world-size": (_world, "rng_ranks"),
    "world-size-not-a-count": (lambda s: s.__setitem__("world_size", -1), "world_size"),
}


def _damaged_run(tmp_path, monkeypatch, kind):
    """A run stopped after epoch 1 whose checkpoint holds BAD_STATES[kind], under a valid checksum; returns its
    config and the words the refusal must name."""
    cfg = _first_epoch_only(tmp_path, monkeypatch, epochs=3)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    edit, named = BAD_STATES[kind]
    edit(state)
    save_checkpoint(ckpt, state)                                  # a valid checksum over the bad values
    return cfg, named


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_impossible_checkpoint_values_are_refused_before_training(tmp_path, monkeypatch, kind):
    cfg, named = _damaged_run(tmp_path, monkeypatch, kind)
    before = snapshot(Path(cfg.out))

    def no_training(*a, **k):
        raise AssertionError("an epoch started")
    monkeypatch.setattr(loop_mod, "save_checkpoint", no_training)
    monkeypatch.setattr(loop_mod, "evaluate_splits", no_training)
    with pytest.raises(DamagedCheckpoint, match="checkpoint .*checkpoint.pt") as info:
        train(dataclasses.replace(cfg, resume=True), log=quiet)
    assert named in str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert snapshot(Path(cfg.out)) == before


@pytest.mark.parametrize("kind", ["empty-history", "negative-epoch"])
def test_inspect_refuses_impossible_checkpoint_values(tmp_path, monkeypatch, kind):
    from impulse_attn.training.inspect import inspect_run
    cfg, named = _damaged_run(tmp_path, monkeypatch, kind)
    with pytest.raises(DamagedCheckpoint) as info:
        inspect_run(cfg.out, images=4, out=tmp_path / "inspect")
    assert named in str(info.value)


def test_a_checkpoint_from_a_run_with_another_step_count_is_refused(tmp_path, monkeypatch):
    # The same settings over more images: the checkpoint's step is not where this run's epoch 1 ends.
    cfg = _first_epoch_only(tmp_path, monkeypatch, epochs=3)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    for r in state["history"]:
        r["step"] = r["step"] * 2
    state["scheduler"]["last_epoch"] *= 2
    save_checkpoint(ckpt, state)
    with pytest.raises(DamagedCheckpoint, match="step 80"):
        train(dataclasses.replace(cfg, resume=True), log=quiet)


def test_a_finished_run_still_resumes_to_itself(tmp_path):
    cfg = run_config(TINY, tmp_path, steps=100, eval_every=2, epochs=50)        # the budget ends inside epoch 3
    first = train(cfg, log=quiet)
    again = train(dataclasses.replace(cfg, resume=True), log=quiet)
    assert again.history == first.history
    assert read_metrics(Path(cfg.out) / "metrics.jsonl") == first.history


# --- the loop's structure ---------------------------------------------------------------------------------------
def test_loop_functions_fit_on_one_screen():
    tree = ast.parse(Path(loop_mod.__file__).read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    long = {f.name: f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno - f.lineno + 1 > 60}
    assert not long, f"functions longer than a screen: {long}"
    train_fn = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "train")
    nested = [n.name for n in ast.walk(train_fn) if isinstance(n, ast.FunctionDef) and n is not train_fn]
    assert not nested, f"train() defines closures: {nested}"


@pytest.mark.parametrize("out, words", [("", "must name a folder"), ("/proc/impulse-attn-run", "cannot be written")])
def test_train_from_python_refuses_an_unusable_out_before_any_work(tmp_path, monkeypatch, out, words):
    # The command line checked --out already; a TrainConfig built in Python must get the same check ('' would
    # write the run's files into the current folder).
    monkeypatch.chdir(tmp_path)
    if out.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(UserError, match=words):
        train(run_config(TINY, tmp_path, out=out), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_fit_cache_write_removes_old_temp_files_of_killed_writers(tmp_path):
    # A writer killed mid-write leaves .impulse-fit-*.tmp; the next write removes those older than an hour and
    # keeps a fresh one (a live writer's) and every other file.
    old, fresh, other = (tmp_path / ".impulse-fit-abc.tmp", tmp_path / ".impulse-fit-def.tmp",
                         tmp_path / "notes.tmp")
    for p in (old, fresh, other):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))
    fit_impulse(**SMALL, cache_dir=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert old.name not in names and {fresh.name, other.name} <= names
    assert len([n for n in names if n.endswith(".pt")]) == 1
