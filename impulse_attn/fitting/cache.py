"""A disk cache of fitted Q, K, so that a model built twice with the same settings fits once.

An entry's key is the SHA-256 of every input that changes the result (fit method and its arguments, seed, offsets,
pseudo-input's bytes, the backend, the package, algorithm and torch versions; ``fitting.api`` assembles them).
Entries are written atomically (a temporary file in the same directory, then ``os.replace``), so a reader never
sees half a file; they are read with ``torch.load(weights_only=True)`` (no code runs on load) and checked: the
stored key, the cache format, a SHA-256 over the entry's contents (every tensor's bytes, the metadata: torch.load
does not check the zip's CRCs, so without it a flipped bit in a stored Q would load silently, as in checkpoints),
every expected tensor's shape and dtype and finiteness. An entry that fails any check is reported as corrupt (one
warning), refitted and overwritten atomically, never served. A cache directory that cannot be written
costs the cache, not the fit (a warning is logged).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: entries carry a SHA-256 of their contents
# Bump whenever a fit's numbers change for the same inputs (kernels, defaults, recipe details).
ALGORITHM_VERSION = 1
#: Temporary files (``.impulse-fit-*.tmp``) older than this are leftovers of a writer killed mid-write (a write takes
#: seconds); each store removes them. An age, not a pid, because the directory may be shared between machines.
STALE_TEMP_SECONDS = 3600.0


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(v, strict: bool = True):
    if isinstance(v, torch.Tensor):
        return {"tensor": tensor_digest(v)}
    if isinstance(v, float):
        return repr(v)  # exact: 0.1 and 0.1000000001 are different keys
    if isinstance(v, (list, tuple)):
        return [_jsonable(u, strict) for u in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(u, strict) for k, u in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if not strict:
        return {type(v).__name__: repr(v)}
    raise TypeError(f"cache key field of unsupported type {type(v).__name__}: {v!r}")


def cache_key(fields: Dict) -> str:
    """SHA-256 over the canonical JSON of ``fields`` (tensors by digest, floats exactly)."""
    payload = json.dumps({"format": CACHE_FORMAT, "algorithm": ALGORITHM_VERSION, **_jsonable(fields)},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def entry_digest(key: str, tensors: Dict[str, torch.Tensor], meta: dict) -> str:
    """SHA-256 over an entry's key, format, every tensor (name, dtype, shape, bytes) and its metadata."""
    payload = json.dumps({"format": CACHE_FORMAT, "key": key, "tensors": _jsonable(dict(tensors)),
                          "meta": _jsonable(meta, strict=False)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class FitCache:
    """Fitted tensors on disk under ``directory``, one file per key."""

    def __init__(self, directory):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path (str or os.PathLike), got {type(directory).__name__}")
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"impulse-fit-{key}.pt"

    def load(self, key: str, expected: Dict[str, Tuple[tuple, torch.dtype]]) -> Tuple[Optional[dict], str]:
        """(entry, "hit") for a valid entry; (None, "miss") when absent; (None, "corrupt: why") otherwise.

        ``expected`` maps each tensor's name to its shape and dtype."""
        path = self.path(key)
        if not path.is_file():
            return None, "miss"
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, garbage, or not a torch file: refit
            return None, f"corrupt: unreadable ({type(e).__name__})"
        why = self._invalid(entry, key, expected)
        if why:
            return None, f"corrupt: {why}"
        return entry, "hit"

    @staticmethod
    def _invalid(entry, key: str, expected) -> str:
        if not isinstance(entry, dict):
            return "not a dict"
        if entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
            return "format or key mismatch"
        tensors, meta = entry.get("tensors"), entry.get("meta")
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            return "no tensors"
        if not isinstance(meta, dict):
            return "meta is not a dict"
        if entry.get("sha256") != entry_digest(key, tensors, meta):
            return "its SHA-256 does not match the one stored when it was written"
        for name, (shape, dtype) in expected.items():
            t = tensors.get(name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                return f"tensor {name!r} missing or of the wrong shape/dtype"
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"tensor {name!r} holds NaN/Inf"
        return ""

    def remove_stale_temps(self, max_age: float = STALE_TEMP_SECONDS) -> int:
        """Remove this cache's temporary files older than ``max_age`` seconds (left by writers killed mid-write);
        returns how many. Entries and every other file are left alone."""
        removed, now = 0, time.time()
        for p in self.directory.glob(".impulse-fit-*.tmp"):
            try:
                if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime > max_age:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def store(self, key: str, tensors: Dict[str, torch.Tensor], meta: Optional[dict] = None) -> bool:
        """Write atomically; returns False (and logs why) when the directory cannot be written."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = meta or {}
        entry = {"format": CACHE_FORMAT, "key": key, "tensors": tensors, "meta": meta,
                 "sha256": entry_digest(key, tensors, meta)}
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.remove_stale_temps()
            fd, tmp = tempfile.mkstemp(prefix=".impulse-fit-", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as f:
                torch.save(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
            tmp = None
            return True
        except OSError as e:
            log.warning("impulse fit cache: could not write %s (%s); continuing without caching",
                        self.path(key), e)
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
