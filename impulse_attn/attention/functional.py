"""Scaled dot-product attention through one switch: every attention layer calls ``attention`` here.

The backend is decided and run next to the op (``attention.backends``): "reference", "sdpa", "triton", or "auto".
This module imports ``backends``; ``backends`` never imports this module.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import backends
from .backends import ATTENTION_BACKENDS, run_backend
from .reference import attention_probs, reference_attention

__all__ = ["attention", "shared_map_attention", "reference_attention", "attention_probs", "ATTENTION_BACKENDS",
           "run_backend"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, N, head_dim), got {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"v must match k in (heads, N), got v {tuple(v.shape)} and k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str = "auto") -> torch.Tensor:
    """Non-causal attention softmax(scale · q kᵀ) v. q, k (B, H, N, d), v (B, H, N, dv) -> (B, H, N, dv).

    A batch dimension of 1 in q and k with B ≠ 1 in v is an input-independent map (modes II and III): the map is
    computed once per head and applied to every sample (``shared_map_attention``). B may be 0.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if q.dim() == 4 and v.dim() == 4 and q.shape[0] == 1 and v.shape[0] != 1:
        return shared_map_attention(q, k, v, scale, backend)
    _check(q, k, v)
    if v.shape[0] != q.shape[0]:
        raise ValueError(f"v must match q in batch size, got v {tuple(v.shape)} and q {tuple(q.shape)}")
    if q.shape[0] == 0:
        return v.new_empty(v.shape)
    return run_backend(backends.choose(backend, q, k, v), q, k, v, scale)


def shared_map_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                         backend: str = "auto") -> torch.Tensor:
    """One map per head for the whole batch: q, k (1, H, N, d), v (B, H, N, dv) -> (B, H, N, dv).

    The batch is folded into the value features, (1, H, N, B·dv), so the N×N map is formed once instead of B
    times. "reference" materializes it; every other backend hands the folded problem to sdpa, which accepts a
    value width different from the query width (the Triton kernel requires equal widths, and nothing is left to
    fuse across the batch once the map is shared).
    """
    _check(q, k, v)
    b, h, n, dv = v.shape
    if b == 0:
        return v.new_empty(v.shape)
    folded = v.permute(1, 2, 0, 3).reshape(1, h, n, b * dv)
    if backend == "reference":
        out = reference_attention(q, k, folded, scale)
    else:
        if backend == "triton":
            warnings.warn("input-independent attention maps (modes II/III) are applied with sdpa on the "
                          "batch-folded values; the Triton kernel is used only for per-sample maps",
                          RuntimeWarning, stacklevel=3)
        out = F.scaled_dot_product_attention(q, k, folded, scale=scale)
    return out.reshape(h, n, b, dv).permute(2, 0, 1, 3)
