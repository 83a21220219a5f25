"""Impulse targets for window attention with a relative position bias (Swin): the bias logits of a shift.

Inside a window of h×w tokens a key's bias depends only on its offset (dr, dc) from the query, so a bias table can
hold an impulse logit exactly: L at the head's offset, 0 elsewhere. For a query whose target key lies inside the
window the softmax then puts mass e^L / (e^L + A − 1) on it (A = h·w tokens, before the query/key term).
"""
from __future__ import annotations

import math

import torch

from .._validate import grid_pair


def window_permutation_offsets(num_heads: int, kernel_size: int, generator: torch.Generator) -> torch.Tensor:
    """(heads, 2) offsets: a random order of the k×k window's positions, head h taking entry h mod k², so heads
    get distinct offsets while there are at most k² of them (and every offset is used once there are k²)."""
    perm = torch.randperm(kernel_size * kernel_size, generator=generator)
    flat = perm[torch.arange(num_heads) % (kernel_size * kernel_size)]
    half = kernel_size // 2
    return torch.stack((flat // kernel_size - half, flat % kernel_size - half), dim=1)


def logit_for_mass(mass: float, tokens: int) -> float:
    """The logit L that puts ``mass`` on one of ``tokens`` keys whose other logits are 0."""
    if not 0 < mass < 1:
        raise ValueError(f"target_mass must be in (0, 1), got {mass!r}")
    if tokens < 2:
        raise ValueError(f"a window of {tokens} token has no other key to take mass from")
    return math.log(mass * (tokens - 1) / (1 - mass))


def window_bias_logits(offsets: torch.Tensor, window, logit: float, dtype=torch.float32) -> torch.Tensor:
    """(heads, 2h − 1, 2w − 1) bias logits in offset coordinates: ``logit`` at (h − 1 + dr, w − 1 + dc) for head
    offset (dr, dc), 0 elsewhere."""
    h, w = grid_pair(window, "window")
    offsets = torch.as_tensor(offsets).long()
    if bool((offsets[:, 0].abs() >= h).any() or (offsets[:, 1].abs() >= w).any()):
        raise ValueError(f"offsets {offsets.tolist()} reach past a {h}x{w} window")
    out = torch.zeros(len(offsets), 2 * h - 1, 2 * w - 1, dtype=dtype)
    out[torch.arange(len(offsets)), h - 1 + offsets[:, 0], w - 1 + offsets[:, 1]] = logit
    return out
