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
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .errors import UserError

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


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it to ``path`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
