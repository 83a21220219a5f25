"""Attention layers whose query/key weights the init strategies set: ImpulseAttention and ViTAttention.

Both share one constructor body and one forward (``QKAttention``); they differ only in how queries and keys are
formed (``_qk``) and in the pseudo-input they report to the init strategies (``qk_request``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import (as_bool, choice, grid_pair, kwargs_dict, model_input, odd_kernel_size, positive_float,
                         positive_int, require_memory, seed_int)
from ..fitting.spec import FIT_METHODS
from ..init import INIT_STRATEGIES, QKRequest, default_scale, initialize_qk_
from ..targets import sincos_2d
from .functional import ATTENTION_BACKENDS, attention
from .reference import attention_probs

MODES = ("I", "II", "III")
#: The query/key layers' (and so the Simple ViT's) one table of init settings, read by the strategies through
#: ``QKRequest.defaults``, by ``--help`` and docs/families.md: the closed form's target and sharpness in a model,
#: a local, soft map (docs/RESULTS.md, "Why the closed form lagged the recipe"). ``fit_impulse`` called directly
#: keeps the published values (target "impulse", mass 0.3).
FIT_DEFAULTS = {"closed_form": {"target": "laplace", "target_mass": 0.1}}


class QKAttention(nn.Module):
    """Self-attention on a token grid: LN (optional), queries/keys from ``_qk``, values from LN(x), one attention
    call, output projection. Implements the init protocol (``qk_request``, ``load_qk``)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, grid_size, init: str, kernel_size: int,
                 scale: Optional[float], fit_method: str, fit_kwargs: Optional[dict], seed: int,
                 attention_backend: str, prenorm: bool, dropout: float, defer_init: bool):
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.head_dim = positive_int(head_dim, "head_dim")
        self.grid_size = grid_pair(grid_size)
        self.init = choice(init, "init", INIT_STRATEGIES)
        self.kernel_size = odd_kernel_size(kernel_size)
        self.fit_method = choice(fit_method, "fit_method", FIT_METHODS)
        self.attention_backend = choice(attention_backend, "attention_backend", ATTENTION_BACKENDS)
        positive_float(dropout, "dropout", allow_zero=True)
        if dropout > 1:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        prenorm, defer_init = as_bool(prenorm, "prenorm"), as_bool(defer_init, "defer_init")
        seed = seed_int(seed)
        fit_kwargs = kwargs_dict(fit_kwargs, "fit_kwargs")
        self._check_sizes()
        dim_in = self._qk_dim_in()
        inner = self.num_heads * self.head_dim
        require_memory(4 * (3 * self.dim * inner + 2 * self.dim + 2 * inner * dim_in),
                       f"an attention layer of dim {self.dim} with {self.num_heads} heads of {self.head_dim}",
                       "use smaller sizes")
        self.scale = positive_float(scale, "scale") if scale is not None else \
            default_scale(init, fit_method, self.num_heads, dim_in, self.head_dim)
        inner = self.num_heads * self.head_dim
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()
        self._build_qk(inner)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        # A model initializes all its layers together (one batched fit) and passes defer_init=True.
        self.fit_results = None if defer_init else initialize_qk_(
            [self], init, seed=seed, fit_method=fit_method, kernel_size=kernel_size, fit_kwargs=fit_kwargs)

    # --- what subclasses define ----------------------------------------------------------------------------
    def _check_sizes(self) -> None:
        """Refuse sizes before any parameter is allocated."""

    def _qk_dim_in(self) -> int:
        return self.dim

    def _build_qk(self, inner: int) -> None:
        self.to_qk = nn.Linear(self.dim, 2 * inner, bias=False)

    def _qk(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _pseudo_input(self) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    # --- the init protocol ---------------------------------------------------------------------------------
    def qk_request(self, with_pseudo_input: bool = True) -> QKRequest:
        x, alpha = self._pseudo_input() if with_pseudo_input else (None, getattr(self, "alpha", 0.0))
        return QKRequest(num_heads=self.num_heads, dim_in=self._qk_dim_in(), head_dim=self.head_dim,
                         grid_size=self.grid_size, pseudo_input=x, alpha=alpha, scale=self.scale,
                         model_dim=self.dim, defaults=FIT_DEFAULTS)

    @torch.no_grad()
    def load_vproj(self, w_v: torch.Tensor, w_out: torch.Tensor) -> None:
        """Write the value projection (inner, dim) and the output projection (dim, inner)."""
        self.to_v.weight.copy_(w_v.to(self.to_v.weight))
        self.to_out.weight.copy_(w_out.to(self.to_out.weight))

    @torch.no_grad()
    def load_qk(self, q: torch.Tensor, k: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None:
        """Write per-head Q, K (heads, D_in, head_dim): head h's queries are X @ q[h]. ``offsets`` (heads, 2) are
        kept (not saved with the state dict) for inspection."""
        w = self.to_qk.weight
        inner = self.num_heads * self.head_dim
        w[:inner].copy_(q.permute(0, 2, 1).reshape(inner, -1).to(w))
        w[inner:].copy_(k.permute(0, 2, 1).reshape(inner, -1).to(w))
        self._keep_offsets(offsets)

    def _keep_offsets(self, offsets: Optional[torch.Tensor]) -> None:
        if offsets is not None:
            self.register_buffer("impulse_offsets", offsets.detach().clone(), persistent=False)

    # --- forward -------------------------------------------------------------------------------------------
    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def _check_tokens(self, x: torch.Tensor) -> None:
        n = self.grid_size[0] * self.grid_size[1]
        model_input(x, "x", self.to_v.weight)
        if x.dim() != 3 or x.shape[1] != n or x.shape[2] != self.dim:
            shape = tuple(x.shape)
            raise ValueError(f"x must have shape (batch, N={n}, dim={self.dim}) for grid {self.grid_size}, got "
                             f"{shape}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_tokens(x)
        xn = self.norm(x)
        q, k = self._qk(xn)
        v = self._split(self.to_v(xn))
        if q.dtype != v.dtype:  # under autocast the free maps (mode III) stay in the parameters' dtype
            q, k = q.to(v.dtype), k.to(v.dtype)
        out = attention(q.contiguous(), k.contiguous(), v.contiguous(), self.scale, self.attention_backend)
        return self.dropout(self.to_out(self._merge(out)))

    @torch.no_grad()
    def attention_map(self, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention maps (B, heads, N, N) for tokens x (B, N, dim)."""
        self._check_tokens(x)
        q, k = self._qk(self.norm(x))
        return attention_probs(q, k, self.scale).expand(x.shape[0], -1, -1, -1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid_size}, "
                f"init={self.init}, scale={self.scale:g}, attention_backend={self.attention_backend}")


class ImpulseAttention(QKAttention):
    """Drop-in self-attention for a token grid, with the paper's query/key input modes.

    forward(x: (B, N, dim)) -> (B, N, dim), N = H·W of ``grid_size`` (row-major tokens), B >= 0.

    Modes (docs/METHOD.md, "Attention modes"):
        "I":   queries/keys from α·LN(x) + (1 − α)·P, values from LN(x) (the model used for all results);
        "II":  queries/keys from P only: an input-independent, learnable spatial mixing per head (the same
               function of the same parameters as "I" at α = 0);
        "III": free N×head_dim query/key parameters per head: softmax(s · Q Kᵀ), no input at all for the map.
    P is the fixed 2D sin-cos encoding; the residual stream carries no positional encoding in these modes.

    init: "impulse" (fitted to random k×k impulse maps), "mimetic", "random" or "default" (PyTorch's).
    scale: softmax scale; default 0.1 for impulse init (the fit's scale; "auto"-scaled for the iterative fit at
    widths other than the paper's, see ``init.default_scale``), head_dim^-0.5 otherwise.
    fit_method: "closed_form" (instant at the paper's sizes, default; refused with a ValueError above
    ``fitting.closed_form.MAX_CLOSED_FORM_WORK``, e.g. mode "III" on grids above about 45×45, whose N×N identity
    pseudo-input costs an N³ SVD per head) or "iterative" (the published Adam recipe); fit_kwargs go to
    ``fit_impulse`` (e.g. steps, backend, target, target_mass; not scale: that is the layer's ``scale``).
    The fit for mode I is made on (1 − α)·P, the positional part of the input the layer really sees.
    prenorm: apply LayerNorm to x inside the layer (as the paper's backbone does); False when the surrounding
    block already normalizes.
    defer_init: skip the query/key init here (a model then initializes all its layers at once, so that the impulse
    fits of every layer run as one batch).
    attention_backend: "auto", "reference", "sdpa" or "triton" (see ``attention.backends``).
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int = 64, grid_size=(16, 16), mode: str = "I",
                 alpha: float = 0.2, init: str = "impulse", kernel_size: int = 5, scale: Optional[float] = None,
                 fit_method: str = "closed_form", fit_kwargs: Optional[dict] = None, seed: int = 0,
                 attention_backend: str = "auto", prenorm: bool = True, dropout: float = 0.0,
                 defer_init: bool = False):
        self.mode = choice(mode, "mode", MODES)
        self.alpha = positive_float(alpha, "alpha", allow_zero=True)
        if self.alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if mode == "I" and init == "impulse" and self.alpha >= 1:
            raise ValueError("alpha must be < 1 with init='impulse' in mode 'I': at alpha = 1 queries and keys "
                             "see no positional encoding to fit")
        super().__init__(dim, num_heads, head_dim, grid_size, init, kernel_size, scale, fit_method, fit_kwargs,
                         seed, attention_backend, prenorm, dropout, defer_init)

    def _check_sizes(self) -> None:
        if self.dim % 4 != 0 or self.dim < 8:
            raise ValueError(f"dim must be a multiple of 4 and >= 8 (2D sin-cos encoding), got {self.dim}")
        n = self.grid_size[0] * self.grid_size[1]
        require_memory(4 * n * self.dim, f"the positional encoding of a {self.grid_size} grid", "use a smaller grid")
        self.register_buffer("pos", sincos_2d(self.grid_size, self.dim), persistent=False)

    def _qk_dim_in(self) -> int:
        return self.grid_size[0] * self.grid_size[1] if self.mode == "III" else self.dim

    def _build_qk(self, inner: int) -> None:
        if self.mode != "III":
            return super()._build_qk(inner)
        n = self.grid_size[0] * self.grid_size[1]
        self.q_free = nn.Parameter(torch.empty(self.num_heads, n, self.head_dim))
        self.k_free = nn.Parameter(torch.empty(self.num_heads, n, self.head_dim))
        bound = n ** -0.5
        nn.init.uniform_(self.q_free, -bound, bound)
        nn.init.uniform_(self.k_free, -bound, bound)

    def _pseudo_input(self) -> tuple[torch.Tensor, float]:
        """The query/key input whose map the init fits: P with content weight α (mode I), P (mode II), I_N
        (mode III)."""
        pos = self.pos.detach().float().cpu()
        if self.mode == "III":
            return torch.eye(pos.shape[0]), 0.0
        return pos, self.alpha if self.mode == "I" else 0.0

    @torch.no_grad()
    def load_qk(self, q: torch.Tensor, k: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None:
        if self.mode != "III":
            return super().load_qk(q, k, offsets)
        self.q_free.copy_(q.to(self.q_free))
        self.k_free.copy_(k.to(self.k_free))
        self._keep_offsets(offsets)

    def _qk(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "III":
            return self.q_free[None], self.k_free[None]
        pos = self.pos.to(xn.dtype)
        if self.mode == "II":
            q, k = self.to_qk(pos[None]).chunk(2, dim=-1)  # computed once for the whole batch
        else:
            q, k = self.to_qk(self.alpha * xn + (1 - self.alpha) * pos).chunk(2, dim=-1)
        return self._split(q), self._split(k)

    @torch.no_grad()
    def attention_map(self, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention maps (B, heads, N, N) for tokens x; x may be None in modes II and III (B = 1)."""
        if x is None:
            if self.mode == "I" and self.alpha > 0:
                raise ValueError("x is required for the attention map in mode 'I' with alpha > 0")
            n = self.grid_size[0] * self.grid_size[1]
            x = torch.zeros(1, n, self.dim, device=self.pos.device, dtype=self.to_v.weight.dtype)
        return super().attention_map(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode}, alpha={self.alpha}"


class ViTAttention(QKAttention):
    """Standard pre-norm ViT self-attention (positional encoding added to the token stream upstream).

    Init strategies apply to its query/key projection too; for "impulse" the fit is made on LN(P), the
    pseudo-input the later versions of the method use for a standard ViT.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int = 64, grid_size=(16, 16),
                 init: str = "default", kernel_size: int = 5, scale: Optional[float] = None,
                 fit_method: str = "closed_form", fit_kwargs: Optional[dict] = None, seed: int = 0,
                 attention_backend: str = "auto", prenorm: bool = True, dropout: float = 0.0,
                 defer_init: bool = False):
        super().__init__(dim, num_heads, head_dim, grid_size, init, kernel_size, scale, fit_method, fit_kwargs,
                         seed, attention_backend, prenorm, dropout, defer_init)

    def _check_sizes(self) -> None:
        if self.init == "impulse" and (self.dim % 4 != 0 or self.dim < 8):
            raise ValueError(f"impulse init needs dim divisible by 4 and >= 8 (sin-cos encoding), got {self.dim}")
        if self.init == "impulse":
            n = self.grid_size[0] * self.grid_size[1]
            require_memory(12 * n * self.dim, f"the pseudo-input of a {self.grid_size} grid", "use a smaller grid")

    def _pseudo_input(self) -> tuple[torch.Tensor, float]:
        return F.layer_norm(sincos_2d(self.grid_size, self.dim), (self.dim,)), 0.0

    def _qk(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.to_qk(xn).chunk(2, dim=-1)
        return self._split(q), self._split(k)
