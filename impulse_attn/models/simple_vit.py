"""Simple ViT (the paper's backbone) with the attention layer chosen by argument."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .._validate import as_int, choice, kwargs_dict, model_input, require_memory, seed_int
from .common import check_backbone
from ..attention import ImpulseAttention, ViTAttention
from ..init import VALUE_INITS, initialize_qk_, initialize_vproj_
from ..targets import sincos_2d

ATTENTIONS = ("impulse", "plain")


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> tokens (B, N, dim): patchify, LayerNorm, Linear, LayerNorm."""

    def __init__(self, channels: int, patch: tuple, dim: int):
        super().__init__()
        self.patch = patch
        patch_dim = channels * patch[0] * patch[1]
        self.proj = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, h, w = img.shape
        p1, p2 = self.patch
        x = img.reshape(b, c, h // p1, p1, w // p2, p2).permute(0, 2, 4, 3, 5, 1)  # b gh gw p1 p2 c
        return self.proj(x.reshape(b, (h // p1) * (w // p2), p1 * p2 * c))


class SimpleViT(nn.Module):
    """Simple ViT: patch embedding, pre-norm attention/MLP blocks, final LayerNorm, mean pooling, linear head.

    attention="impulse": ImpulseAttention in ``mode`` "I", "II" or "III" (no positional encoding in the token
        stream; the layers mix it into their queries and keys).
    attention="plain": standard ViT attention with the 2D sin-cos encoding added to the patch embeddings.
    init: query/key init of every attention layer ("impulse", "mimetic", "random", "default"). For impulse the
        fits of all layers run as one batch, each layer with fresh offsets (``fit_kwargs={"offsets": "cycle"}``:
        every layer cycles through the k×k window instead).
    value_init: value and output projections: "default" (PyTorch's) or "mimetic" (≈ 0.4·Z − 0.4·I).
    The paper's configuration is the default: 32×32 images, patch 2 (a 16×16 grid), dim 512, depth 6, 8 heads of
    64, MLP 512.
    """

    def __init__(self, image_size=32, patch_size=2, num_classes: int = 10, dim: int = 512, depth: int = 6,
                 num_heads: int = 8, head_dim: int = 64, mlp_dim: int = 512, channels: int = 3,
                 attention: str = "impulse", mode: str = "I", alpha: float = 0.2, init: str = "impulse",
                 kernel_size: int = 5, scale: Optional[float] = None, fit_method: str = "closed_form",
                 fit_kwargs: Optional[dict] = None, seed: int = 0, attention_backend: str = "auto",
                 value_init: str = "default"):
        super().__init__()
        (ih, iw), grid, (ph, pw) = check_backbone(image_size, patch_size, num_classes=num_classes, depth=depth,
                                                  channels=channels, mlp_dim=mlp_dim, num_heads=num_heads,
                                                  head_dim=head_dim)
        choice(attention, "attention", ATTENTIONS)
        dim = as_int(dim, "dim")
        seed = seed_int(seed)
        fit_kwargs = kwargs_dict(fit_kwargs, "fit_kwargs")
        if dim < 8 or dim % 4 != 0:
            raise ValueError(f"dim must be a multiple of 4 and >= 8 (2D sin-cos encoding), got {dim}")
        require_memory(self._estimate_bytes(dim, depth, num_heads, head_dim, mlp_dim, channels, (ph, pw), grid),
                       f"a SimpleViT of dim {dim}, depth {depth}, {num_heads} heads of {head_dim}",
                       "use a smaller model")
        self.image_size, self.grid_size = (ih, iw), grid
        self.channels = channels
        self.attention_kind = attention
        self.init = init
        self.embed = PatchEmbed(channels, (ph, pw), dim)
        self.add_pos = attention == "plain"
        self.register_buffer("pos", sincos_2d(self.grid_size, dim), persistent=False)
        common = dict(num_heads=num_heads, head_dim=head_dim, grid_size=self.grid_size, init=init,
                      kernel_size=kernel_size, scale=scale, fit_method=fit_method,
                      attention_backend=attention_backend, defer_init=True)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            attn = (ImpulseAttention(dim, mode=mode, alpha=alpha, **common) if attention == "impulse"
                    else ViTAttention(dim, **common))
            self.blocks.append(nn.ModuleList([attn, FeedForward(dim, mlp_dim)]))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.fit_results = self.init_weights(init, seed=seed, fit_method=fit_method, kernel_size=kernel_size,
                                             fit_kwargs=fit_kwargs, value_init=value_init)

    @staticmethod
    def _estimate_bytes(dim, depth, heads, head_dim, mlp_dim, channels, patch, grid) -> int:
        """Parameters with their gradients and Adam moments (4 copies of float32)."""
        patch_dim = channels * patch[0] * patch[1]
        n = grid[0] * grid[1]
        per_block = 4 * dim * heads * head_dim + 2 * dim * mlp_dim + heads * n * head_dim * 2
        return 16 * (depth * per_block + patch_dim * dim + 2 * n * dim)

    def init_weights(self, init: str, *, seed: int = 0, fit_method: str = "closed_form", kernel_size: int = 5,
                     fit_kwargs: Optional[dict] = None, value_init: str = "default") -> Optional[list]:
        """(Re-)initialize the query/key weights of every attention layer with an init strategy, in one batch
        (for "impulse": one fit for all layers, fresh offsets per layer), and the value/output projections with
        ``value_init`` ("default": PyTorch's; "mimetic": value-then-projection ≈ 0.4·Z − 0.4·I, as the later
        versions of the method do). Returns the fit results."""
        choice(value_init, "value_init", VALUE_INITS)
        seed = seed_int(seed)
        self.init = init
        self.fit_results = initialize_qk_(self.attention_layers(), init, seed=seed, fit_method=fit_method,
                                          kernel_size=kernel_size, fit_kwargs=fit_kwargs)
        initialize_vproj_(self.attention_layers(), value_init, seed=seed)
        return self.fit_results

    def attention_layers(self) -> list:
        return [blk[0] for blk in self.blocks]

    def set_attention_backend(self, attention_backend: str) -> None:
        from ..attention import ATTENTION_BACKENDS
        choice(attention_backend, "attention_backend", ATTENTION_BACKENDS)
        for layer in self.attention_layers():
            layer.attention_backend = attention_backend

    def tokens(self, img: torch.Tensor) -> torch.Tensor:
        model_input(img, "img", self.head.weight)
        if img.dim() != 4 or img.shape[1] != self.channels or tuple(img.shape[-2:]) != self.image_size:
            raise ValueError(f"img must have shape (batch, {self.channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(img.shape)}")
        x = self.embed(img)
        return x + self.pos.to(x.dtype) if self.add_pos else x

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.tokens(img)
        for attn, ff in self.blocks:
            x = attn(x) + x
            x = ff(x) + x
        return self.head(self.norm(x).mean(dim=1))

    @torch.no_grad()
    def attention_maps(self, img: torch.Tensor) -> list:
        """Per layer, the attention maps (B, heads, N, N) on ``img`` (for pictures and inspection)."""
        x = self.tokens(img)
        maps = []
        for attn, ff in self.blocks:
            maps.append(attn.attention_map(x))
            x = attn(x) + x
            x = ff(x) + x
        return maps
