"""What a layer tells an init strategy, and nothing more: the query/key fit request (and, below, the window bias
and token-mixing requests).

A layer whose query/key weights an init strategy may set implements ``QKLayer``: ``qk_request()`` returns a
``QKRequest`` (the shapes, the pseudo-input its queries and keys see at init — only built when the strategy asks
for it —, its content weight α, grid and softmax scale) and ``load_qk(q, k, offsets)`` writes per-head Q, K (heads,
D_in, head_dim); ``load_vproj(w_v, w_out)`` writes the value and output projections (value/projection inits).
Strategies read requests and call the loaders; they never touch a layer's parameters or buffers.

A standard ViT as a whole (``ViTLayers``: its position embedding, and per block query/key/value/projection) is what
the structured-init paper initializes; a strategy with a ``vit`` handler gets that view and returns a ``ViTPlan``
for what the family does after the writes (the position embedding's scale or its calibration, a refit on data).
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
    defaults: Optional[dict] = None   # the family's init settings ({"closed_form": {...}, ...}), handlers' base

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
    defaults: Optional[dict] = None   # the family's init settings (e.g. {"window_mass": 0.7})


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
    defaults: Optional[dict] = None   # the family's init settings (e.g. {"gain": 2.0})


@runtime_checkable
class TokenMixLayer(Protocol):
    """A token-mixing MLP whose weights an init strategy may set (MLP-Mixer)."""

    def token_mix_request(self) -> TokenMixRequest: ...

    def load_token_mix(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                       offsets: Optional[torch.Tensor] = None) -> None:
        """w1 (hidden, N), b1 (hidden,), w2 (N, hidden), b2 (N,)."""


@dataclass(frozen=True)
class ViTRequest:
    """A standard ViT as a whole (timm, Hugging Face, torchvision: the position embedding is added to the tokens,
    pre-norm blocks with query/key/value/output projections): depth, num_heads, dim (width; D = heads · head_dim),
    head_dim, grid (H, W); scales: each block's softmax scale; qk_norm: some block normalizes queries and keys;
    has_position: the model has a position embedding; defaults: the family's init settings (its one table of
    defaults, e.g. the closed form's target and the calibrated position share), which a handler's own keywords
    override."""

    depth: int
    num_heads: int
    dim: int
    head_dim: int
    grid: Tuple[int, int]
    scales: Tuple[float, ...]
    qk_norm: bool
    has_position: bool
    defaults: dict


@dataclass
class ViTPlan:
    """What a ``vit`` handler asks of the family once its weights are written: the offsets it used (depth, heads,
    2) or None; the position embedding (``position_scale``: multiply the embedding found before any init by it;
    ``calibrate_share``: or calibrate the scale to that share of every block's query/key input variance, on the
    images given to ``init_``); ``refit``: fit_impulse settings to refit each block on its own input averaged over
    those images, block by block (None: no refit); ``qk_bias``: "keep" or "zero" the query/key biases; ``result``:
    how the query/key weights were found (fit_method, fit_seconds, fit_report, backend, fit_scale) and
    ``constants``: every constant used, for the report."""

    offsets: Optional[torch.Tensor] = None
    position_scale: Optional[float] = None
    calibrate_share: Optional[float] = None
    refit: Optional[dict] = None
    qk_bias: str = "keep"
    result: dict = None
    constants: dict = None


@runtime_checkable
class ViTLayers(Protocol):
    """A standard ViT's blocks and position embedding, as a strategy's ``vit`` handler sees them. Writes are held
    until the handler returns, so a refusal raised inside it leaves the model as it was."""

    request: ViTRequest

    def position_rows(self, scale: float) -> torch.Tensor:
        """The grid rows of ``scale`` × the position embedding found before any init, (N, D) float32 (raw, not
        layer-normed): what the paper's code layer-norms itself."""

    def pseudo_input(self, scale: float) -> torch.Tensor:
        """LN(``position_rows(scale)``), (N, D) float64 (no affine, eps 1e-5): the query/key input at init when
        position dominates."""

    def write_qk(self, block: int, q_rows: torch.Tensor, k_rows: torch.Tensor) -> None:
        """The block's query and key weight rows, (D, D) each, head h's in rows h·r … (h + 1)·r."""

    def write_vproj(self, block: int, w_v: torch.Tensor, w_proj: torch.Tensor) -> None:
        """The block's value rows (D, D) and output projection weight (D, D) (``Linear`` layout)."""
