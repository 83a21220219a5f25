"""Value/output-projection inits ("default", "mimetic"), applied after the query/key init."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .._validate import choice, require_memory, seed_int
from .protocol import QKLayer, VProjLayer

VALUE_INITS = ("default", "mimetic")


def mimetic_vproj(dim: int, inner: int, generator: torch.Generator, noise_gain: float = 0.4,
                  identity_gain: float = -0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """The later versions' value/projection init (after Trockman & Kolter): value-then-projection is x ↦ x·A with
    A = noise_gain·sqrt(1/D)·U(−1, 1) + identity_gain·I (0.4 and −0.4: the mimetic paper's α, β), its best
    rank-``inner`` part when inner < D.

    Returns W_v (inner, D) and W_out (D, inner) for ``Linear`` layers: x W_vᵀ W_outᵀ = x (W_out W_v)ᵀ = x A."""
    noise = 2 * torch.rand(dim, dim, generator=generator, dtype=torch.float64) - 1
    a = noise_gain * math.sqrt(1.0 / dim) * noise + identity_gain * torch.eye(dim, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(a.T)                     # Aᵀ = W_out W_v
    k = min(inner, dim)
    root = s[:k].sqrt()
    w_out = torch.zeros(dim, inner, dtype=torch.float64)
    w_v = torch.zeros(inner, dim, dtype=torch.float64)
    w_out[:, :k] = u[:, :k] * root
    w_v[:k] = root[:, None] * vh[:k]
    return w_v.float(), w_out.float()


def initialize_vproj_(layers: Sequence[QKLayer], value_init: str, *, seed: int = 0) -> None:
    """Initialize the value and output projections of attention ``layers`` in place: "default" leaves PyTorch's
    init, "mimetic" sets value-then-projection to ≈ 0.4·Z − 0.4·I (``mimetic_vproj``), fresh per layer."""
    choice(value_init, "value_init", VALUE_INITS)
    seed = seed_int(seed)
    if value_init == "default":
        return
    gen = torch.Generator().manual_seed(seed + 7919)  # not the query/key init's stream
    for layer in layers:
        if not isinstance(layer, VProjLayer):
            raise TypeError(f"layers must implement qk_request() and load_vproj() (VProjLayer), got "
                            f"{type(layer).__name__}")
    for layer in layers:
        r = layer.qk_request(with_pseudo_input=False)
        require_memory(32 * r.model_dim * r.model_dim, f"the mimetic value init of width {r.model_dim}",
                       "use smaller sizes")
        layer.load_vproj(*mimetic_vproj(r.model_dim, r.num_heads * r.head_dim, gen))
