"""Scaled dot-product attention through one switch: every attention layer calls ``attention`` here.

Backends: "reference" (explicit softmax in plain PyTorch, the ground truth), "sdpa"
(torch.nn.functional.scaled_dot_product_attention), "triton" (the fused kernel in ``kernels.triton_attention``)
and "auto" (resolved by ``backends.select_attention_backend``: triton on CUDA when it can run, sdpa otherwise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends import select_attention_backend, warn_once

ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "triton")


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ) v with the softmax in float32 (or float64 for float64 inputs)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    return (logits.softmax(dim=-1) @ v.to(acc)).to(v.dtype)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, N, head_dim), got {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must match k in (batch, heads, N), got v {tuple(v.shape)} and k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              backend: str = "reference") -> torch.Tensor:
    """Non-causal attention. q, k (B, H, N, d), v (B, H, N, dv) -> (B, H, N, dv).

    A batch dimension of 1 in q and k with B > 1 in v is an input-independent map (modes II and III): the map is
    computed once per head and applied to every sample (``shared_map_attention``).
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if q.dim() == 4 and v.dim() == 4 and q.shape[0] == 1 and v.shape[0] > 1:
        return shared_map_attention(q, k, v, scale, backend)
    _check(q, k, v)
    chosen = select_attention_backend(backend, q, k, v)
    if chosen == "reference":
        return reference_attention(q, k, v, scale)
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from ..kernels.triton_attention import flash_attention
    return flash_attention(q, k, v, scale)


def shared_map_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                         backend: str = "reference") -> torch.Tensor:
    """One map per head for the whole batch: q, k (1, H, N, d), v (B, H, N, dv) -> (B, H, N, dv).

    The batch is folded into the value features, (1, H, N, B·dv), so the N×N map is formed once instead of B
    times. "reference" materializes it; every other backend hands the folded problem to sdpa, which accepts a
    value width different from the query width (the Triton kernel requires equal widths, and nothing is left to
    fuse across the batch once the map is shared).
    """
    _check(q, k, v[:1])
    b, h, n, dv = v.shape
    folded = v.permute(1, 2, 0, 3).reshape(1, h, n, b * dv)
    if backend == "reference":
        out = reference_attention(q, k, folded, scale)
    else:
        if backend == "triton":
            warn_once("input-independent attention maps (modes II/III) are applied with sdpa on the batch-folded "
                      "values; the Triton kernel is used only for per-sample maps")
        out = F.scaled_dot_product_attention(q, k, folded, scale=scale)
    return out.reshape(h, n, b, dv).permute(2, 0, 1, 3)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention map softmax(scale · q kᵀ) in float32 (for inspection and pictures)."""
    return ((q.float() @ k.float().transpose(-1, -2)) * scale).softmax(dim=-1)
