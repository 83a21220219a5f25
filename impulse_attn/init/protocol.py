"""What a layer tells an init strategy, and nothing more: the query/key fit request (and, below, the window bias
and token-mixing requests).

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


@dataclass(frozen=True)
class WindowRequest:
    """A window attention's relative position bias: num_heads, window (h, w) in tokens (the bias table holds one
    logit per head for each of the (2h − 1)(2w − 1) relative offsets), grid (H, W): the token grid it windows."""

    num_heads: int
    window: Tuple[int, int]
    grid: Tuple[int, int]


@runtime_checkable
class WindowBiasLayer(Protocol):
    """A window attention whose relative position bias an init strategy may set (Swin)."""

    def window_request(self) -> WindowRequest: ...

    def load_window_bias(self, logits: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None:
        """``logits`` (heads, 2h − 1, 2w − 1): the bias of a key at (row, col) offset (dr, dc) from its query is
        ``logits[:, h − 1 + dr, w − 1 + dc]``."""


@dataclass(frozen=True)
class TokenMixRequest:
    """A token-mixing MLP over the N = H·W tokens of ``grid`` with ``hidden`` hidden units (fc1: N → hidden,
    activation, fc2: hidden → N), shared by every channel."""

    grid: Tuple[int, int]
    hidden: int
    activation: str


@runtime_checkable
class TokenMixLayer(Protocol):
    """A token-mixing MLP whose weights an init strategy may set (MLP-Mixer)."""

    def token_mix_request(self) -> TokenMixRequest: ...

    def load_token_mix(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                       offsets: Optional[torch.Tensor] = None) -> None:
        """w1 (hidden, N), b1 (hidden,), w2 (N, hidden), b2 (N,)."""
