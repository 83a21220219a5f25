"""What an attention layer tells an init strategy, and nothing more: the query/key fit request.

A layer whose query/key weights an init strategy may set implements ``QKLayer``: ``qk_request()`` returns a
``QKRequest`` (the shapes, the pseudo-input its queries and keys see at init — only built when the strategy asks
for it —, its content weight α, grid and softmax scale) and ``load_qk(q, k, offsets)`` writes per-head Q, K (heads,
D_in, head_dim); ``load_vproj(w_v, w_out)`` writes the value and output projections (value/projection inits).
Strategies read requests and call the loaders; they never touch a layer's parameters or buffers.
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
    model_dim: int = 0          # the width of the token stream (values and the output projection)

    def batch_key(self) -> tuple:
        """Requests with equal keys can be fitted in one batch."""
        return (self.num_heads, self.dim_in, self.head_dim, self.grid_size, self.alpha, self.scale)


@runtime_checkable
class QKLayer(Protocol):
    def qk_request(self, with_pseudo_input: bool = True) -> QKRequest: ...

    def load_qk(self, q: torch.Tensor, k: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None: ...


@runtime_checkable
class VProjLayer(Protocol):
    """A layer whose value and output projections a value init may set."""

    def qk_request(self, with_pseudo_input: bool = True) -> QKRequest: ...

    def load_vproj(self, w_v: torch.Tensor, w_out: torch.Tensor) -> None: ...
