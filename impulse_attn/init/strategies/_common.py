"""What several strategies share: applying a per-layer draw of Q, K to query/key layers."""
from __future__ import annotations

from typing import Callable, List

import torch

from ..._validate import require_memory
from ..protocol import QKLayer, QKRequest


def independent(make: Callable, bytes_per_head: Callable[[int, int], int]) -> Callable:
    """A qk handler that draws Q, K (heads, D_in, head_dim) per layer with ``make(heads, D_in, r, generator)``."""
    def apply(layers: List[QKLayer], requests: List[QKRequest], generator: torch.Generator, **_):
        for r in requests:
            require_memory(r.num_heads * bytes_per_head(r.dim_in, r.head_dim),
                           f"the {make.__name__} init of {r.num_heads} heads of width {r.dim_in}", "use smaller sizes")
        for layer, r in zip(layers, requests):
            layer.load_qk(*make(r.num_heads, r.dim_in, r.head_dim, generator))
        return None
    return apply
