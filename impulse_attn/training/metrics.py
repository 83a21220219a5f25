"""Per-epoch metrics as JSON lines: appended and fsynced one line at a time, replaced only atomically.

A run killed while writing leaves at most one torn last line; ``read_metrics`` drops it. On resume the file is
rewritten (atomically) to the history stored in the checkpoint, so epochs after the checkpoint that will be
run again are not counted twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List

from .checkpoint import atomic_write_bytes


def read_metrics(path: Path) -> List[dict]:
    """The records of a metrics file; a torn last line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class MetricsWriter:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def replace(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, obj) -> None:
    """Write a JSON document atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode("utf-8")))
