"""Where a run writes: the output folder, checked before any work."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def check_out_path(out, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot hold a run's files: an empty name (it would mean the
    current folder), a NUL character or a name longer than the file system takes, an existing file or a path
    under one, and a place where no file can be created (found by creating and removing one, which also catches
    what permission bits do not say, e.g. /proc, or a read-only mount for root)."""
    text = os.fspath(out) if isinstance(out, os.PathLike) else out
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{flag} must name a folder, got {text!r}", "pass e.g. runs/train")
    if "\0" in text:
        raise UserError(f"{flag} {text!r} holds a NUL character", "pass an ordinary folder path")
    path = Path(text)
    try:
        parent = path
        while not parent.exists():
            parent = parent.parent
        try:
            longest = os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            longest = 255
        too_long = [p for p in path.parts if len(os.fsencode(p)) > longest]
        if too_long:
            raise UserError(f"{flag} {path}: the name {too_long[0][:40]}... is too long (at most {longest} bytes)",
                            "pass a shorter folder name")
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path} is an existing file, not a folder", "pass a folder for the files")
        if not parent.is_dir():
            raise UserError(f"{flag} {path} lies under {parent}, which is a file", "pass a folder path")
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be used ({e.strerror or e})", "pass another folder") from None
    why = None
    if not os.access(parent, os.W_OK | os.X_OK):
        why = f"{parent} is not writable"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".impulse-attn-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            why = f"no file can be created in {parent}: {e.strerror or e}"
    if why:
        raise UserError(f"{flag} {path} cannot be written ({why})", "pass a writable folder")
    return path

