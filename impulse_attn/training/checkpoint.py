"""Checkpoints that survive a kill at any moment, and the random state a run needs to resume exactly.

``save_checkpoint`` writes to a temporary file in the same folder, fsyncs it and renames it over the old one:
a reader sees the previous checkpoint or the new one, never a torn file. ``load_checkpoint`` reads with
``weights_only=True`` (no code runs from a checkpoint), so everything stored is tensors, numbers, strings,
lists and dicts: the numpy and Python RNG states are converted to those.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

from .errors import DamagedCheckpoint, UserError

FORMAT = "impulse-attn-checkpoint"
VERSION = 2
# What a training checkpoint must hold, and the type of each entry (checked before any of it is used).
REQUIRED = {"epoch": int, "config": dict, "init": dict, "model": dict, "optimizer": dict, "scheduler": dict,
            "scaler": dict, "rng": dict, "history": list}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, pid: Optional[int] = None) -> Path:
    """The temporary file ``atomic_write_bytes`` writes ``path`` through: ``.<name>.tmp-<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it to ``path`` (atomic on POSIX).

    A process killed mid-write (SIGKILL, SIGTERM) leaves the temp file; ``remove_stale_temps`` clears it later."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[1-9][0-9]{0,9})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, someone else's; anything else: keep the file
        return True
    return True


def remove_stale_temps(folder: Path, names: Iterable[str]) -> List[str]:
    """Remove the temp files that ``atomic_write_bytes`` left in ``folder`` for the files ``names`` when a
    process died mid-write; returns the names removed.

    Only regular files named ``.<one of names>.tmp-<pid>`` are touched, and only when ``<pid>`` is this process
    (which is not writing while it calls this: the file is a leftover of an earlier process with the same pid)
    or no live process: a temp file of another live process (which may be writing it now) is kept, and so is
    every other file."""
    folder, names = Path(folder), set(names)
    removed = []
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry)
        if m is None or m["name"] not in names:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            if stat.S_ISREG(os.lstat(folder / entry).st_mode):
                os.unlink(folder / entry)
                removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write ``state`` atomically, with a SHA-256 of its bytes that ``load_checkpoint`` verifies.

    torch.load does not check the zip's CRCs, so a flipped bit in a weight would load silently; the digest over
    the whole serialized state catches any change."""
    payload = _serialize(state)
    outer = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
             "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    atomic_write_bytes(path, lambda f: torch.save(outer, f))


def _refuse(path: Path, why: str) -> UserError:
    return UserError(f"checkpoint {path} is {why}",
                     "restore it, or start a new run with another --out (the file is left as it is)")


def load_checkpoint(path: Path, required: Optional[Dict[str, type]] = None) -> Dict[str, Any]:
    """Load and verify a checkpoint written by ``save_checkpoint`` (``weights_only=True``: no code runs).

    A missing, corrupt (digest mismatch, unreadable), foreign or incomplete file is a one-line UserError; the file
    is never modified. ``required`` maps keys to the types they must have (default: nothing beyond the format).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} to resume", "drop --resume to start a new run, or pass the --out "
                        "of the run to continue")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise _refuse(path, f"corrupt or not a checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise UserError(f"{path} is not an impulse-attn checkpoint", "pass the --out folder of an impulse-attn run")
    if outer.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has format version {outer.get('version')!r}, this package reads "
                        f"{VERSION}", "resume it with the impulse-attn version that wrote it")
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1 \
            or not isinstance(digest, str):
        raise _refuse(path, "corrupt (no payload or checksum)")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise _refuse(path, "corrupt (its SHA-256 does not match the one stored when it was written)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise _refuse(path, f"corrupt ({type(e).__name__} in its payload)") from None
    if not isinstance(state, dict):
        raise _refuse(path, "corrupt (its payload is not a mapping)")
    for key, kind in (required or {}).items():
        if key not in state:
            raise _refuse(path, f"incomplete (no {key!r})")
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            raise _refuse(path, f"damaged ({key!r} is a {type(state[key]).__name__}, expected {kind.__name__})")
    return state


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_train_state(state: Dict[str, Any], path: Path) -> None:
    """Refuse (DamagedCheckpoint) a training state whose values contradict each other: the epoch, the history
    (one record per epoch 0..epoch, in order), the steps in it, the scheduler's step, the per-process random
    states. Run after ``load_checkpoint(path, REQUIRED)``; needs nothing of the run (see ``check_state_fits_run``)."""
    epoch, history = state["epoch"], state["history"]
    if epoch < 1:
        raise DamagedCheckpoint(path, f"epoch {epoch}: checkpoints are written after epoch 1 or later")
    if not history:
        raise DamagedCheckpoint(path, "its history is empty")
    if len(history) != epoch + 1:
        raise DamagedCheckpoint(path, f"its history holds {len(history)} records for epoch {epoch}, expected "
                                      f"{epoch + 1} (epochs 0 to {epoch})")
    last_step = 0
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise DamagedCheckpoint(path, f"history record {i} is a {type(record).__name__}, expected a dict")
        if record.get("epoch") != i or not _is_int(record.get("epoch")):
            raise DamagedCheckpoint(path, f"history record {i} is of epoch {record.get('epoch')!r}, expected {i}")
        step = record.get("step", last_step)
        if not _is_int(step) or step < last_step or (i == 0 and step != 0):
            raise DamagedCheckpoint(path, f"history record {i} is at step {step!r}, after step {last_step}")
        last_step = step
    last_epoch = state["scheduler"].get("last_epoch", 0)
    if not _is_int(last_epoch) or last_epoch < 0:
        raise DamagedCheckpoint(path, f"its scheduler is at step {last_epoch!r}")
    world = state.get("world_size", 1)
    if not _is_int(world) or world < 1:
        raise DamagedCheckpoint(path, f"world_size {world!r} is not a process count")
    ranks = state.get("rng_ranks")
    if (world > 1 or ranks is not None) and not (
            isinstance(ranks, list) and len(ranks) == world and all(isinstance(r, dict) for r in ranks)):
        got = f"{len(ranks)} entries" if isinstance(ranks, list) else type(ranks).__name__
        raise DamagedCheckpoint(path, f"rng_ranks holds {got} for world_size {world}, expected one random state "
                                      f"per process")


def check_state_fits_run(state: Dict[str, Any], path: Path, epochs: int, steps_per_epoch: int,
                         total_steps: int) -> None:
    """Refuse (DamagedCheckpoint) a training state that this run cannot have written: an epoch beyond its
    ``epochs``, or steps other than those its epochs end at (epoch e ends at step min(e * steps_per_epoch,
    total_steps)), in the history or the scheduler."""
    epoch = state["epoch"]
    if epoch > epochs:
        raise DamagedCheckpoint(path, f"epoch {epoch} is beyond this run's {epochs} epochs")
    for record in state["history"]:
        expected = min(record["epoch"] * steps_per_epoch, total_steps)
        if "step" in record and record["step"] != expected:
            raise DamagedCheckpoint(path, f"epoch {record['epoch']} ends at step {record['step']}, where this run "
                                          f"({steps_per_epoch} steps an epoch, {total_steps} in all) is at step "
                                          f"{expected}")
    expected = min(epoch * steps_per_epoch, total_steps)
    last_epoch = state["scheduler"].get("last_epoch", expected)
    if last_epoch != expected:
        raise DamagedCheckpoint(path, f"its scheduler is at step {last_epoch}, where this run is at step {expected} "
                                      f"after epoch {epoch}")


def rng_state() -> Dict[str, Any]:
    """Every random state a training step can touch, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
