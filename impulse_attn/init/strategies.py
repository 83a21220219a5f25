"""Query/key init strategies: default, random, mimetic, impulse (METHOD.md §2 and §4).

Each strategy produces, per attention layer, Q and K of shape (heads, D_in, r) where D_in is the width of the
query/key input (the model width, or N for mode III's free maps). Layers expose ``qk_pseudo_input()`` (the
input their query/key projection sees at init, for fitting) and ``set_qk(q, k)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .._validate import choice

INIT_STRATEGIES = ("default", "random", "mimetic", "impulse")


def random_qk(heads: int, dim_in: int, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Q, K ~ U(±sqrt(1/D))."""
    bound = math.sqrt(1.0 / dim_in)
    q = (2 * torch.rand(heads, dim_in, rank, generator=generator) - 1) * bound
    k = (2 * torch.rand(heads, dim_in, rank, generator=generator) - 1) * bound
    return q, k


def mimetic_qk(heads: int, dim_in: int, rank: int, generator: torch.Generator, alpha: float = 0.7,
               beta: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Trockman & Kolter's mimetic init: W = α·sqrt(1/D)·U(−1, 1) + β·I per head, Q Kᵀ = its best rank-r part."""
    noise = 2 * torch.rand(heads, dim_in, dim_in, generator=generator, dtype=torch.float64) - 1
    w = alpha * math.sqrt(1.0 / dim_in) * noise + beta * torch.eye(dim_in, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w)
    root = s[:, :rank].sqrt()
    q = u[:, :, :rank] * root[:, None, :]
    k = vh[:, :rank, :].transpose(1, 2) * root[:, None, :]
    if rank > dim_in:
        pad = torch.zeros(heads, dim_in, rank - dim_in, dtype=torch.float64)
        q, k = torch.cat((q, pad), -1), torch.cat((k, pad), -1)
    return q.float(), k.float()


def initialize_qk_(layers: Sequence[torch.nn.Module], strategy: str, *, seed: int = 0,
                   fit_method: str = "closed_form", kernel_size: int = 5, fit_kwargs: Optional[dict] = None,
                   ) -> Optional[list]:
    """Initialize the query/key weights of attention ``layers`` in place. Returns the FitResults for "impulse".

    All layers must share heads, rank and pseudo-input shape for "impulse" (one batched fit, fresh offsets per
    layer); "default" leaves PyTorch's Kaiming-uniform init untouched.
    """
    choice(strategy, "init", INIT_STRATEGIES)
    layers = list(layers)
    if strategy == "default" or not layers:
        return None
    gen = torch.Generator().manual_seed(seed)
    if strategy in ("random", "mimetic"):
        for layer in layers:
            heads, dim_in, rank = layer.qk_shape()
            make = random_qk if strategy == "random" else mimetic_qk
            layer.set_qk(*make(heads, dim_in, rank, gen))
        return None
    from ..fitting import fit_impulse
    heads, dim_in, rank = layers[0].qk_shape()
    x = layers[0].qk_pseudo_input()
    for layer in layers[1:]:
        if layer.qk_shape() != (heads, dim_in, rank) or not torch.equal(layer.qk_pseudo_input(), x):
            raise ValueError("impulse init fits all layers in one batch: every layer must share heads, head dim "
                             "and query/key input")
    kwargs = dict(fit_kwargs or {})
    scale = kwargs.pop("scale", layers[0].scale)
    grid = layers[0].grid_size
    res = fit_impulse(heads, grid, kernel_size, dim_in, rank, method=fit_method, seed=seed,
                      layers=len(layers), pseudo_input=x, scale=scale, **kwargs)
    q = res.q.reshape(len(layers), heads, dim_in, rank)
    k = res.k.reshape(len(layers), heads, dim_in, rank)
    offsets = res.offsets.reshape(len(layers), heads, 2)
    for i, layer in enumerate(layers):
        layer.set_qk(q[i], k[i])
        layer.register_buffer("impulse_offsets", offsets[i].clone(), persistent=False)
    return [res]
