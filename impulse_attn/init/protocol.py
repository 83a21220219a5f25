"""What an attention layer tells an init strategy, and nothing more: the query/key fit request.

A layer whose query/key weights an init strategy may set implements ``QKLayer``: ``qk_request()`` returns a
``QKRequest`` (the shapes, the pseudo-input its queries and keys see at init — only built when the strategy asks
for it —, its content weight α, grid and softmax scale) and ``load_qk(q, k, offsets)`` writes per-head Q, K (heads, D_in, head_dim). Strategies read
requests and call ``load_qk``; they never touch a layer's parameters or buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Tuple, runtime_checkable

import torch


@dataclass(frozen=True)
class QKRequest:
    """num_heads, dim_in (width of the query/key input: the model width, or N for free maps), head_dim;
    pseudo_input (N, dim_in): the positional part X₀ of the query/key input, which is α·content + (1 − α)·X₀;
    grid_size (H, W) with N = H·W; scale: the layer's softmax scale."""

    num_heads: int
    dim_in: int
    head_dim: int
    grid_size: Tuple[int, int]
    pseudo_input: Optional[torch.Tensor]
    alpha: float
    scale: float

    def batch_key(self) -> tuple:
        """Requests with equal keys can be fitted in one batch."""
        return (self.num_heads, self.dim_in, self.head_dim, self.grid_size, self.alpha, self.scale)


@runtime_checkable
class QKLayer(Protocol):
    def qk_request(self, with_pseudo_input: bool = True) -> QKRequest: ...

    def load_qk(self, q: torch.Tensor, k: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None: ...
