"""official: the structured-init paper's own closed form (arXiv 2505.19985, its public code), as a strategy.

On a standard ViT (timm, Hugging Face) the families reproduce the paper's code bit for bit, position-embedding
scale and value/projection included (``impulse_attn.families.standard_vit``). On any other query/key layer this
handler applies the same query/key formula to the layer's own pseudo-input: offsets cycling through the window in
the code's order, target logits 1000·T + 3·Z, rank-r pseudo-inverse and SVD, Q and K of Frobenius norm 7.
"""
from __future__ import annotations

import math

import torch

from ...fitting.structured import official_logits, official_offsets, official_qk, pinv_rank
from ..registry import Strategy, register_strategy

#: ``norm_q`` of the public code: Q_h and K_h of unit Frobenius norm, times 7.
QK_SCALE = 7.0


def official_qk_layers(layers, requests, generator, *, seed: int, kernel_size: int, **_):
    for layer, r in zip(layers, requests):
        if r.pseudo_input is None:
            raise ValueError("the official fit needs the layer's pseudo-input (the positional part of its queries "
                             "and keys); this layer reports none")
        rank, ratio = pinv_rank(r.pseudo_input.to(torch.float64), r.head_dim)
        floor = 10 * math.sqrt(torch.finfo(torch.float64).eps)
        if rank < r.head_dim or ratio < floor:
            raise ValueError(f"the official fit truncates the pseudo-inverse of the {tuple(r.pseudo_input.shape)} "
                             f"pseudo-input at rank head_dim = {r.head_dim}, but it has rank {rank}: use "
                             f"init 'impulse'")
        offsets = official_offsets(r.num_heads, kernel_size)
        logits = official_logits(offsets, r.grid_size, generator=generator)
        q, k = official_qk(r.pseudo_input, logits, r.head_dim)
        layer.load_qk((QK_SCALE * q).float(), (QK_SCALE * k).float(), offsets)
    return None


STRATEGY = register_strategy(Strategy(
    "official", "the structured-init paper's own closed form (bit for bit on timm/Hugging Face ViTs)",
    qk=official_qk_layers, needs_pseudo_input=True))
