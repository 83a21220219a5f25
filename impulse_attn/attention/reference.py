"""The attention reference: softmax(scale · q kᵀ) v in plain PyTorch, the ground truth every fast path is held to."""
from __future__ import annotations

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ) v with the softmax in float32 (or float64 for float64 inputs)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    return (logits.softmax(dim=-1) @ v.to(acc)).to(v.dtype)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention map softmax(scale · q kᵀ) in float32 (for inspection and pictures)."""
    return ((q.float() @ k.float().transpose(-1, -2)) * scale).softmax(dim=-1)
