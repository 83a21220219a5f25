"""A standard ViT seen by the structured-init engine: position embedding, token grid, and per block the
query/key/value/output-projection weights, whatever module layout the model uses (timm's fused ``qkv``, Hugging
Face's separate projections)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn


@dataclass
class BlockView:
    """One attention block. ``q``, ``k``, ``v``: Linear layers or (Linear, row slice) of a fused one; ``proj``:
    the output projection; ``module``: the module whose first input is the (normed) tokens the attention reads."""

    module: nn.Module
    num_heads: int
    scale: float
    q: Tuple[nn.Linear, slice]
    k: Tuple[nn.Linear, slice]
    v: Tuple[nn.Linear, slice]
    proj: nn.Linear
    q_norm: nn.Module
    k_norm: nn.Module

    @staticmethod
    def _w(part):
        lin, rows = part
        return lin.weight[rows]

    @staticmethod
    def _b(part):
        lin, rows = part
        return None if lin.bias is None else lin.bias[rows]

    def weight(self, name: str) -> torch.Tensor:
        return self._w(getattr(self, name))

    def bias(self, name: str) -> Optional[torch.Tensor]:
        return self._b(getattr(self, name))

    @torch.no_grad()
    def write(self, name: str, value: torch.Tensor) -> None:
        lin, rows = getattr(self, name)
        lin.weight[rows].copy_(value.to(lin.weight))

    @torch.no_grad()
    def zero_bias(self, name: str) -> None:
        b = self.bias(name)
        if b is not None:
            b.zero_()


@dataclass
class ViTView:
    """grid (H, W); dim; heads, head_dim; prefix: class/register/distillation tokens
    before the grid tokens; pos: the position embedding parameter (1, T, D) or None; pos_offset: its rows before
    the grid's (0 when prefix tokens get no position); run: images → the model's forward (maps are read by hooks);
    input_shape: the (C, H, W) of those images."""

    model: nn.Module
    grid: Tuple[int, int]
    dim: int
    heads: int
    head_dim: int
    prefix: int
    pos: Optional[nn.Parameter]
    pos_offset: int
    blocks: List[BlockView]
    run: Callable[[torch.Tensor], object]
    input_shape: Tuple[int, int, int] = (0, 0, 0)     # (channels, height, width) of the images ``run`` takes

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def n(self) -> int:
        return self.grid[0] * self.grid[1]


def check_view(view: ViTView, need_pos: bool) -> ViTView:
    """The checks every standard ViT must pass, whatever its family: heads agree across blocks, D = heads · head
    dim, a position embedding matching the grid (when the init reads it)."""
    if not view.blocks:
        raise ValueError("model has no transformer blocks")
    dim = view.dim
    for i, b in enumerate(view.blocks):
        hd = b.weight("q").shape[0] // b.num_heads
        if b.weight("q").shape != (dim, dim) or b.weight("k").shape != (dim, dim) or hd * b.num_heads != dim:
            raise ValueError(f"block {i}: queries map {b.weight('q').shape[1]} -> {b.weight('q').shape[0]} with "
                             f"{b.num_heads} heads; the init needs D -> D with D = heads · head_dim (D = {dim})")
        if b.proj.in_features != dim or b.proj.out_features != dim:
            raise ValueError(f"block {i}: the output projection maps {b.proj.in_features} -> {b.proj.out_features}, "
                             f"expected {dim} -> {dim}")
        if (b.num_heads, hd) != (view.heads, view.head_dim):
            raise ValueError(f"block {i} has {b.num_heads} heads of dim {hd}, block 0 has {view.heads} of dim "
                             f"{view.head_dim}: all blocks are fitted in one batch and must agree")
    pos = view.pos
    if pos is None:
        if need_pos:
            raise ValueError("model has no position embedding (e.g. pos_embed='none'): the impulse fit uses the "
                             "layer-normed position embedding as its pseudo-input")
        return view
    if pos.is_meta:
        raise ValueError("the model's position embedding is on the meta device: materialize the model first")
    g = view.grid
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != dim or pos.shape[1] != view.n + view.pos_offset:
        raise ValueError(f"the position embedding has shape {tuple(pos.shape)}; a {g[0]}x{g[1]} patch grid with "
                         f"{view.pos_offset} embedded prefix tokens needs (1, {view.n + view.pos_offset}, {dim}): "
                         f"it does not match the patch grid")
    return view


def tokens_from_hook(args, kwargs) -> torch.Tensor:
    """The tokens an attention module was called with (first positional argument, or ``hidden_states=``)."""
    x = args[0] if args else kwargs.get("hidden_states")
    return x.detach()
