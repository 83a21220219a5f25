"""The one place where fast paths are chosen, and where users can see which exist and why not.

Attention backends: "reference" (explicit softmax), "sdpa" (torch's scaled_dot_product_attention), "triton"
(fused kernel, CUDA or the Triton interpreter). Fit backends: "reference" (autograd), "cpp" / "cuda" (the
compiled ``impulse_attn._C`` extension).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Dict, Optional

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _extension_status() -> tuple[Optional[object], str]:
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except ImportError as e:
        return None, f"compiled extension impulse_attn._C not built ({e}); run `pip install -e .`"
    return _C, ""


def extension_available(device: str = "cpu") -> tuple[bool, str]:
    """Whether the compiled fit can run on ``device`` ("cpu" or "cuda"), and why not."""
    mod, why = _extension_status()
    if mod is None:
        return False, why
    if device == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        if not getattr(mod, "has_cuda", lambda: False)():
            return False, "extension was built without CUDA sources"
    return True, ""


def select_fit_backend(requested: str) -> str:
    """Resolve "auto" to the fastest available fit backend; fail loudly when an explicit one is missing."""
    if requested == "reference":
        return requested
    if requested == "auto":
        for cand, dev in (("cuda", "cuda"), ("cpp", "cpu")):
            ok, _ = extension_available(dev)
            if ok:
                return cand
        return "reference"
    ok, why = extension_available("cuda" if requested == "cuda" else "cpu")
    if not ok:
        raise RuntimeError(f"fit backend {requested!r} is not available: {why}")
    return requested


def triton_unavailable_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    try:
        from .kernels import triton_attention
    except Exception as e:  # triton missing or broken: the other backends still work
        return f"triton kernel could not be imported ({type(e).__name__}: {e})"
    return triton_attention.unavailable_reason(q, k, v)


_warned: set = set()


def warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def select_attention_backend(requested: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """Resolve the attention backend for these tensors. "auto": triton on CUDA when it can run, else sdpa."""
    if requested in ("reference", "sdpa"):
        return requested
    if requested == "triton":
        why = triton_unavailable_reason(q, k, v)
        if why is not None:
            raise RuntimeError(f"attention backend 'triton' cannot run here: {why}. Use backend='auto' to fall "
                               f"back to sdpa.")
        return "triton"
    # auto
    if q.is_cuda:
        why = triton_unavailable_reason(q, k, v)
        if why is None:
            return "triton"
        warn_once(f"attention backend 'auto' falls back to sdpa: {why}")
    return "sdpa"


def backends() -> Dict[str, str]:
    """What is available on this machine, and why not: {name: "available" | reason}."""
    out = {"attention/reference": "available", "attention/sdpa": "available"}
    probe = torch.zeros(1, 1, 1, 16, device="cuda" if torch.cuda.is_available() else "cpu")
    why = triton_unavailable_reason(probe, probe, probe)
    out["attention/triton"] = "available" if why is None else why
    out["fit/reference"] = "available"
    for name, dev in (("fit/cpp", "cpu"), ("fit/cuda", "cuda")):
        ok, why = extension_available(dev)
        out[name] = "available" if ok else why
    return out
