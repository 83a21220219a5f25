"""Which attention backend runs, decided next to the op.

Backends: "reference" (``reference.reference_attention``), "sdpa" (torch's scaled_dot_product_attention, which
picks its own fused kernel), "triton" (``triton_flash``, CUDA or the Triton interpreter). "auto" resolves, once
per (device, dtype, head dim) and process, to the first of ``AUTO_ORDER[device type]`` that can run there.

Policy: "auto" uses a kernel of ours only where it has been measured to win. Until the GPU acceptance run
(``make gpu-check``, docs/PERFORMANCE.md) shows the Triton kernel at least as fast as SDPA on a GPU, "auto" on CUDA
is SDPA, so ``AUTO_ORDER["cuda"]`` does not list "triton". Where a kernel of ours is listed, its first use on a
device runs a small parity probe against the reference; a mismatch or an exception takes it out of "auto" for the
process, with one warning that names the cause. An explicitly requested backend is never replaced: it runs or
raises (``require``).

This module runs the backends too (``run_backend``); ``functional`` calls it and nothing here imports
``functional``, so the two form no import cycle. Under ``torch.compile`` the decision (``choose``) is taken once,
while the graph is traced, by a function the compiler treats as constant (``_choose_for_trace``): the checks and
caches behind it (importlib, lru_cache, the probe) never enter the graph, so a model traces to one graph.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import reference_attention

ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "triton")
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {"cuda": ("sdpa",), "cpu": ("sdpa",)}

_resolved: Dict[tuple, str] = {}
_probe_results: Dict[tuple, Optional[str]] = {}


def triton_unavailable_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """None when the Triton kernel can run on these tensors, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        from . import triton_flash
    except Exception as e:  # a broken triton install must not break the other backends (tests import it directly)
        return f"the Triton kernel could not be imported ({type(e).__name__}: {e})"
    return triton_flash.unavailable_reason(q, k, v)


def unavailable_reason(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    if name in ("reference", "sdpa"):
        return None
    if name == "triton":
        return triton_unavailable_reason(q, k, v)
    raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {name!r}")


def run_backend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Run one named backend (no checks, no choice)."""
    if name == "reference":
        return reference_attention(q, k, v, scale)
    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from . import triton_flash  # looked up at each call: tests replace flash_attention on the module
    return triton_flash.flash_attention(q, k, v, scale)


def _probe(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> Optional[str]:
    """Run the backend once on a small odd-sized problem against the float64 reference.

    Error model: the kernels accumulate in fp32 (fp64 for fp64 inputs); with inputs of unit size the fp32 error
    of one output is a few ulps times log N; 1e-2 absolute covers fp16/bf16 input rounding (2^-8 relative) and is
    orders of magnitude below the O(1) errors of a wrong kernel."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    exact = reference_attention(q, k, v, head_dim ** -0.5)
    try:
        out = run_backend(name, *(t.to(device=device, dtype=dtype) for t in (q, k, v)), head_dim ** -0.5)
    except Exception as e:
        return f"parity probe raised {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    err = float((out.double().cpu() - exact).abs().max()) if out.shape == exact.shape else float("inf")
    if not err <= 1e-2:
        return f"parity probe: it differs from the reference by {err:.3g} (bound 0.01)"
    return None


def resolve(requested: str, q: torch.Tensor) -> str:
    """The backend that runs for tensors like ``q``: an explicit name as it is, "auto" as decided (and cached)
    for q's (device, dtype, head dim)."""
    if requested != "auto":
        return requested
    key = (q.device.type, q.device.index, q.dtype, q.shape[-1])
    if key not in _resolved:
        chosen = "sdpa"
        for name in AUTO_ORDER.get(q.device.type, ("sdpa",)):
            if name in ("reference", "sdpa"):
                chosen = name
                break
            why = unavailable_reason(name, q, q, q)
            if why is None:
                if key not in _probe_results:
                    _probe_results[key] = _probe(name, q.device, q.dtype, q.shape[-1])
                why = _probe_results[key]
                if why is not None:
                    warnings.warn(f"attention backend 'auto' does not use {name!r} on {q.device} ({q.dtype}): {why}",
                                  RuntimeWarning, stacklevel=3)
            if why is None:
                chosen = name
                break
        _resolved[key] = chosen
    return _resolved[key]


def require(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """An explicitly requested backend that cannot run here is an error that says why."""
    why = unavailable_reason(name, q, k, v)
    if why is not None:
        raise RuntimeError(f"attention backend {name!r} cannot run here: {why}. Use backend='auto' to let the "
                           f"package pick one that can.")


def choose(requested: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The backend that runs for these tensors: ``require`` for an explicit name, ``resolve`` for "auto".

    Eagerly it checks the tensors themselves. While torch.compile traces, the same decision is made from
    (device, dtype, head dim) by ``_choose_for_trace``, whose result the compiler keeps as a constant."""
    if torch.compiler.is_compiling():
        return _choose_for_trace(requested, q.device.type, q.device.index, q.dtype, q.shape[-1])
    return _choose_now(requested, q, k, v)


def _choose_now(requested: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    if requested != "auto":
        require(requested, q, k, v)
    return resolve(requested, q)


@torch.compiler.assume_constant_result
def _choose_for_trace(requested: str, device_type: str, device_index: Optional[int], dtype: torch.dtype,
                      head_dim: int) -> str:
    # Runs in plain Python at trace time (never traced): tensors standing for q, k, v with the traced ones'
    # device, dtype and head dim. Shape mismatches between q, k and v are the kernels' own checks, which trace.
    device = torch.device(device_type) if device_index is None else torch.device(device_type, device_index)
    like = torch.zeros((1, 1, 1, head_dim), dtype=dtype, device=device)
    return _choose_now(requested, like, like, like)


def reset() -> None:
    """Forget cached decisions and probe results (tests)."""
    _resolved.clear()
    _probe_results.clear()
