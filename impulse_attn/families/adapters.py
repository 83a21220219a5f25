"""Protocol adapters over other libraries' modules: what lets any registered strategy reach timm and Hugging
Face models through ``init.protocol`` (the strategies never see the modules)."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..init.protocol import QKRequest
from .view import BlockView


class BlockQKLayer:
    """A ``QKLayer``/``VProjLayer`` over a ``BlockView``: per-head Q, K (heads, D, r) written as the rows of the
    block's query/key weights (head h's query of token x is x @ Q_h); the query/key biases are zeroed so the map
    on the pseudo-input is the one set. ``pseudo_input``: None (the strategy may not need one) or a callable."""

    def __init__(self, block: BlockView, grid: Tuple[int, int], pseudo_input: Optional[Callable[[], torch.Tensor]],
                 defaults: Optional[dict] = None):
        self.block = block
        self.grid = grid
        self._pseudo_input = pseudo_input
        self.defaults = defaults
        self.offsets: Optional[torch.Tensor] = None

    def qk_request(self, with_pseudo_input: bool = True) -> QKRequest:
        b = self.block
        d = b.weight("q").shape[1]
        x = self._pseudo_input() if (with_pseudo_input and self._pseudo_input is not None) else None
        return QKRequest(num_heads=b.num_heads, dim_in=d, head_dim=b.weight("q").shape[0] // b.num_heads,
                         grid_size=self.grid, pseudo_input=x, alpha=0.0, scale=b.scale, model_dim=b.proj.out_features,
                         defaults=self.defaults)

    @torch.no_grad()
    def load_qk(self, q: torch.Tensor, k: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None:
        heads, d, r = q.shape
        self.block.write("q", q.permute(0, 2, 1).reshape(heads * r, d))
        self.block.write("k", k.permute(0, 2, 1).reshape(heads * r, d))
        self.block.zero_bias("q")
        self.block.zero_bias("k")
        self.offsets = None if offsets is None else offsets.detach().clone()

    @torch.no_grad()
    def load_vproj(self, w_v: torch.Tensor, w_out: torch.Tensor) -> None:
        self.block.write("v", w_v)
        self.block.proj.weight.copy_(w_out.to(self.block.proj.weight))
