"""mimetic: Trockman & Kolter's mimetic query/key init (docs/METHOD.md, "Baselines")."""
from __future__ import annotations

import math

import torch

from ..registry import Strategy, register_strategy
from ._common import independent


def mimetic_qk(heads: int, dim_in: int, head_dim: int, generator: torch.Generator,
               noise_gain: float = 0.7, identity_gain: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Trockman & Kolter's mimetic init: W = noise_gain·sqrt(1/D)·U(−1, 1) + identity_gain·I per head, Q Kᵀ = its
    best rank-r part. ``noise_gain``, ``identity_gain`` are the mimetic paper's α, β."""
    noise = 2 * torch.rand(heads, dim_in, dim_in, generator=generator, dtype=torch.float64) - 1
    w = noise_gain * math.sqrt(1.0 / dim_in) * noise + identity_gain * torch.eye(dim_in, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w)
    root = s[:, :head_dim].sqrt()
    q = u[:, :, :head_dim] * root[:, None, :]
    k = vh[:, :head_dim, :].transpose(1, 2) * root[:, None, :]
    if head_dim > dim_in:
        pad = torch.zeros(heads, dim_in, head_dim - dim_in, dtype=torch.float64)
        q, k = torch.cat((q, pad), -1), torch.cat((k, pad), -1)
    return q.float(), k.float()


STRATEGY = register_strategy(Strategy(
    "mimetic", "Q Kᵀ ≈ 0.7·Z + 0.7·I per head (Trockman & Kolter); query/key layers only",
    qk=independent(mimetic_qk, lambda d, r: 32 * d * d)))   # a D×D float64 matrix and its SVD per head
