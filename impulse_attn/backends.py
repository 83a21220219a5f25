"""What is available on this machine, and why not: the answers of each op's own backend module, collected.

Each op decides its backend next to itself (``attention.backends``, ``fitting.backends``); this module only
asks them, for users (``impulse_attn.backends()``) and for the command line.
"""
from __future__ import annotations

from typing import Dict

import torch

from .attention import backends as attention_backends
from .fitting import backends as fit_backends


def backends() -> Dict[str, str]:
    """{"attention/<name>" | "fit/<name>": "available" | why not}. Probes nothing: parity probes run on first use."""
    out = {}
    probe = torch.zeros(1, 1, 1, 16, device="cuda" if torch.cuda.is_available() else "cpu")
    for name in attention_backends.ATTENTION_BACKENDS[1:]:
        why = attention_backends.unavailable_reason(name, probe, probe, probe)
        out[f"attention/{name}"] = "available" if why is None else why
    for name in ("reference",) + fit_backends.COMPILED[::-1]:
        why = fit_backends.unavailable_reason(name, probe=False)
        out[f"fit/{name}"] = "available" if why is None else why
    return out
