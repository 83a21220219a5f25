"""Attention layers whose query/key weights the init strategies can set: ImpulseAttention and ViTAttention."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import choice, grid_pair, odd_kernel_size, positive_float, positive_int
from ..fitting.api import resolve_scale
from ..init import INIT_STRATEGIES, initialize_qk_
from ..targets import sincos_2d
from .functional import ATTENTION_BACKENDS, attention, attention_probs

MODES = ("I", "II", "III")
FIT_METHODS = ("closed_form", "iterative")


def _default_scale(scale: Optional[float], init: str, fit_method: str, qk_shape: tuple) -> float:
    """Softmax scale of a layer: the fit's scale for impulse init, dim_head^-0.5 otherwise.

    Closed-form fits put the sharpness into Q, K, so the published 0.1 serves every width. The iterative recipe
    keeps the init's logit budget, which shrinks like D²/(r·heads): "auto" scales 0.1 (exact at the paper's
    size) so the recipe still learns at small widths.
    """
    if scale is not None:
        return positive_float(scale, "scale")
    heads, dim_in, rank = qk_shape
    if init != "impulse":
        return rank ** -0.5
    return resolve_scale("auto", dim_in, rank, heads) if fit_method == "iterative" else 0.1


class _QKLayer(nn.Module):
    """Shared plumbing: head split, the one attention call, and the hooks the init strategies use."""

    heads: int
    dim_head: int
    scale: float
    grid_size: tuple

    def _setup(self, dim, num_heads, dim_head, grid_size, init, kernel_size, fit_method, backend) -> None:
        """Validate and store what every attention layer shares (before any parameter is created)."""
        self.dim = positive_int(dim, "dim")
        self.heads = positive_int(num_heads, "num_heads")
        self.dim_head = positive_int(dim_head, "dim_head")
        self.grid_size = grid_pair(grid_size)
        self.init = choice(init, "init", INIT_STRATEGIES)
        odd_kernel_size(kernel_size)
        choice(fit_method, "fit_method", FIT_METHODS)
        self.backend = choice(backend, "backend", ATTENTION_BACKENDS)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def _check_tokens(self, x: torch.Tensor) -> None:
        n = self.grid_size[0] * self.grid_size[1]
        if x.dim() != 3 or x.shape[1] != n or x.shape[2] != self.dim:
            raise ValueError(f"x must have shape (batch, N={n}, dim={self.dim}) for grid {self.grid_size}, got "
                             f"{tuple(x.shape)}")

    def qk_shape(self) -> tuple[int, int, int]:
        return self.heads, self.dim, self.dim_head

    @torch.no_grad()
    def set_qk(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Write per-head Q, K (heads, D_in, r) into the projection: q_h = X @ Q_h."""
        w = self.to_qk.weight
        inner = self.heads * self.dim_head
        w[:inner].copy_(q.permute(0, 2, 1).reshape(inner, -1).to(w))
        w[inner:].copy_(k.permute(0, 2, 1).reshape(inner, -1).to(w))

    def _init_qk(self, init: str, seed: int, fit_method: str, kernel_size: int, fit_kwargs, defer: bool) -> None:
        # A model initializes all its layers together (one batched fit) and passes defer_init=True.
        self.fit_results = None if defer else initialize_qk_(
            [self], init, seed=seed, fit_method=fit_method, kernel_size=kernel_size, fit_kwargs=fit_kwargs)


class ImpulseAttention(_QKLayer):
    """Drop-in self-attention for a token grid, with the paper's query/key input modes.

    forward(x: (B, N, dim)) -> (B, N, dim), N = H·W of ``grid_size`` (row-major tokens).

    Modes (METHOD.md §3):
        "I":   queries/keys from α·LN(x) + (1 − α)·P, values from LN(x) (the model used for all results);
        "II":  queries/keys from P only: an input-independent, learnable spatial mixing per head;
        "III": free N×r query/key parameters per head: softmax(s · Q Kᵀ), no input at all for the map.
    P is the fixed 2D sin-cos encoding; the residual stream carries no positional encoding in these modes.

    init: "impulse" (fitted to random k×k impulse maps), "mimetic", "random" or "default" (PyTorch's).
    scale: softmax scale; default 0.1 for impulse init (the fit's scale; "auto"-scaled for the iterative fit at
    widths other than the paper's, see ``fitting.api.resolve_scale``), dim_head^-0.5 otherwise.
    fit_method: "closed_form" (instant, default) or "iterative" (the published Adam recipe); fit_kwargs go to
    ``fit_impulse`` (e.g. steps, backend, target_mass). The fit for mode I is made on (1 − α)·P, the positional
    part of the input the layer really sees.
    prenorm: apply LayerNorm to x inside the layer (as the paper's backbone does); False when the surrounding
    block already normalizes.
    defer_init: skip the query/key init here (a model then calls ``init.initialize_qk_`` on all its layers at
    once, so that the impulse fits of every layer run as one batch).
    backend: "auto", "reference", "sdpa" or "triton" (see ``attention.functional``).
    """

    def __init__(self, dim: int, num_heads: int = 8, dim_head: int = 64, grid_size=(16, 16), mode: str = "I",
                 alpha: float = 0.2, init: str = "impulse", kernel_size: int = 5, scale: Optional[float] = None,
                 fit_method: str = "closed_form", fit_kwargs: Optional[dict] = None, seed: int = 0,
                 backend: str = "auto", prenorm: bool = True, dropout: float = 0.0, defer_init: bool = False):
        super().__init__()
        self._setup(dim, num_heads, dim_head, grid_size, init, kernel_size, fit_method, backend)
        self.mode = choice(mode, "mode", MODES)
        self.alpha = positive_float(alpha, "alpha", allow_zero=True)
        if self.alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if mode == "I" and init == "impulse" and self.alpha >= 1:
            raise ValueError("alpha must be < 1 with init='impulse' in mode 'I': at alpha = 1 queries and keys "
                             "see no positional encoding to fit")
        if dim % 4 != 0:
            raise ValueError(f"dim must be a multiple of 4 (2D sin-cos encoding), got {dim}")
        self.scale = _default_scale(scale, init, fit_method, self.qk_shape())
        inner = self.heads * self.dim_head
        n = self.grid_size[0] * self.grid_size[1]
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()
        self.register_buffer("pos", sincos_2d(self.grid_size, dim), persistent=False)
        if mode == "III":
            self.q_free = nn.Parameter(torch.empty(self.heads, n, self.dim_head))
            self.k_free = nn.Parameter(torch.empty(self.heads, n, self.dim_head))
            bound = n ** -0.5
            nn.init.uniform_(self.q_free, -bound, bound)
            nn.init.uniform_(self.k_free, -bound, bound)
        else:
            self.to_qk = nn.Linear(dim, 2 * inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self._init_qk(init, seed, fit_method, kernel_size, fit_kwargs, defer_init)

    # --- hooks for the init strategies -------------------------------------------------------------------
    def qk_shape(self) -> tuple[int, int, int]:
        n = self.grid_size[0] * self.grid_size[1]
        return (self.heads, n, self.dim_head) if self.mode == "III" else (self.heads, self.dim, self.dim_head)

    def qk_pseudo_input(self) -> torch.Tensor:
        """The query/key input whose map the init fits: (1 − α)·P (mode I), P (mode II), I_N (mode III)."""
        pos = self.pos.detach().float().cpu()
        if self.mode == "III":
            return torch.eye(pos.shape[0])
        return pos * (1 - self.alpha) if self.mode == "I" else pos

    @torch.no_grad()
    def set_qk(self, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.mode == "III":
            self.q_free.copy_(q.to(self.q_free))
            self.k_free.copy_(k.to(self.k_free))
        else:
            super().set_qk(q, k)

    # --- forward -----------------------------------------------------------------------------------------
    def _qk(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "III":
            return self.q_free[None].to(xn.dtype), self.k_free[None].to(xn.dtype)
        pos = self.pos.to(xn.dtype)
        if self.mode == "II":
            q, k = self.to_qk(pos[None]).chunk(2, dim=-1)  # computed once for the whole batch
        else:
            q, k = self.to_qk(self.alpha * xn + (1 - self.alpha) * pos).chunk(2, dim=-1)
        return self._split(q), self._split(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_tokens(x)
        xn = self.norm(x)
        q, k = self._qk(xn)
        v = self._split(self.to_v(xn))
        out = attention(q.contiguous(), k.contiguous(), v.contiguous(), self.scale, self.backend)
        return self.dropout(self.to_out(self._merge(out)))

    @torch.no_grad()
    def attention_map(self, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention maps (B, heads, N, N) for input x; x may be None in modes II and III (B = 1)."""
        if x is None:
            if self.mode == "I" and self.alpha > 0:
                raise ValueError("x is required for the attention map in mode 'I' with alpha > 0")
            n = self.grid_size[0] * self.grid_size[1]
            x = torch.zeros(1, n, self.dim, device=self.pos.device)
        self._check_tokens(x)
        q, k = self._qk(self.norm(x))
        return attention_probs(q, k, self.scale)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, grid={self.grid_size}, "
                f"mode={self.mode}, alpha={self.alpha}, init={self.init}, scale={self.scale:g}, "
                f"backend={self.backend}")


class ViTAttention(_QKLayer):
    """Standard pre-norm ViT self-attention (positional encoding added to the token stream upstream).

    Init strategies apply to its query/key projection too; for "impulse" the fit is made on LN(P), the
    pseudo-input the later versions of the method use for a standard ViT.
    """

    def __init__(self, dim: int, num_heads: int = 8, dim_head: int = 64, grid_size=(16, 16),
                 init: str = "default", kernel_size: int = 5, scale: Optional[float] = None,
                 fit_method: str = "closed_form", fit_kwargs: Optional[dict] = None, seed: int = 0,
                 backend: str = "auto", prenorm: bool = True, dropout: float = 0.0, defer_init: bool = False):
        super().__init__()
        self._setup(dim, num_heads, dim_head, grid_size, init, kernel_size, fit_method, backend)
        self.scale = _default_scale(scale, init, fit_method, self.qk_shape())
        inner = self.heads * self.dim_head
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()
        self.to_qk = nn.Linear(dim, 2 * inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self._init_qk(init, seed, fit_method, kernel_size, fit_kwargs, defer_init)

    def qk_pseudo_input(self) -> torch.Tensor:
        if self.dim % 4 != 0:
            raise ValueError(f"impulse init needs dim divisible by 4 (sin-cos encoding), got {self.dim}")
        return F.layer_norm(sincos_2d(self.grid_size, self.dim), (self.dim,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_tokens(x)
        xn = self.norm(x)
        q, k = (self._split(t) for t in self.to_qk(xn).chunk(2, dim=-1))
        v = self._split(self.to_v(xn))
        out = attention(q.contiguous(), k.contiguous(), v.contiguous(), self.scale, self.backend)
        return self.dropout(self.to_out(self._merge(out)))

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        self._check_tokens(x)
        q, k = (self._split(t) for t in self.to_qk(self.norm(x)).chunk(2, dim=-1))
        return attention_probs(q, k, self.scale)
