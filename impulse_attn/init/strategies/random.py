"""random: query/key weights drawn U(±sqrt(1/D)) (docs/METHOD.md, "Baselines")."""
from __future__ import annotations

import math

import torch

from ..registry import Strategy, register_strategy
from ._common import independent


def random_qk(heads: int, dim_in: int, head_dim: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Q, K ~ U(±sqrt(1/D))."""
    bound = math.sqrt(1.0 / dim_in)
    q = (2 * torch.rand(heads, dim_in, head_dim, generator=generator) - 1) * bound
    k = (2 * torch.rand(heads, dim_in, head_dim, generator=generator) - 1) * bound
    return q, k


STRATEGY = register_strategy(Strategy(
    "random", "query/key weights U(±sqrt(1/D))", qk=independent(random_qk, lambda d, r: 8 * d * r)))
