"""The prior on data: how impulse-like a model's maps are on real images, and how much of what its query/key layers
read is position.

The init report's "argmax on the offset" is measured on the pseudo-input (the position part alone), which no
trained model ever sees. On images, each layer's query/key input is content and position together, and a map that
is a clean shift on the pseudo-input may be noise on data. Every family measures, per layer, on a batch of images:

- ``argmax_hit``, ``target_mass``: over the valid rows (a target on the grid, and for Swin in the query's window),
  the share of rows whose argmax is the head's offset, and the mean weight on it, averaged over the images;
- ``position_share`` (query/key families): the share of each query/key input's variance that lies along the
  token's position embedding (cos² of the channel-centered vectors, averaged over tokens and images: 1 when the
  input is the position alone, about σ_p²/(σ_p² + σ_c²) for content of std σ_c added to a position of std σ_p);
- ``bias_share`` (Swin): the share of the attention logits' variance that is the relative position bias, against
  the content (query·key) logits.

Each family implements ``on_data(model, images, offsets) -> list of per-layer dicts`` from these helpers.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..targets import impulse_targets, target_quality, valid_rows

FIGURES = ("argmax_hit", "target_mass", "position_share", "bias_share")


def position_share(inputs: torch.Tensor, position: torch.Tensor) -> float:
    """Mean over images and tokens of cos²(input, position), both centered over channels: inputs (B, N, D),
    position (N, D)."""
    u = inputs.to(torch.float64)
    u = u - u.mean(-1, keepdim=True)
    p = position.to(device=u.device, dtype=torch.float64)
    p = p - p.mean(-1, keepdim=True)
    dot = (u * p).sum(-1)
    norms = (u * u).sum(-1) * (p * p).sum(-1)
    return float((dot * dot / norms.clamp(min=1e-300)).mean())


def logit_share(part: torch.Tensor, rest: torch.Tensor) -> float:
    """var(part) / (var(part) + var(rest)) over the last two dims, averaged over the leading ones: how much of the
    logits one term sets."""
    vp = part.to(torch.float64).flatten(-2).var(-1, unbiased=False)
    vr = rest.to(torch.float64).flatten(-2).var(-1, unbiased=False)
    return float((vp / (vp + vr).clamp(min=1e-300)).mean())


def map_quality(maps: torch.Tensor, offsets: torch.Tensor, grid, keep: Optional[Callable] = None,
                share: Optional[Callable] = None) -> dict:
    """Argmax hit and target mass of maps (B, heads, N, N) against the impulse targets of ``offsets`` (heads, 2),
    over the valid rows that ``keep(maps, target_weight)`` accepts (default: all), averaged over the batch; the
    mass is ``share(maps, target_weight)`` (default: the target weight). The one definition every report uses."""
    out = target_quality(maps, impulse_targets(offsets, grid).argmax(-1), valid_rows(offsets, grid), keep, share)
    out["rows"] = out["rows"] / max(maps.shape[0], 1)
    return out


def with_quality(row: dict, offsets, layer: int, maps: Callable[[], torch.Tensor], grid,
                 quality: Callable = map_quality) -> dict:
    """``row`` with the map quality of ``layer`` added where ``offsets`` holds its offsets (an impulse-type init):
    ``maps()`` (B, heads, N, N) is computed only then, and judged by ``quality`` (default ``map_quality``)."""
    off = offsets[layer] if offsets is not None and layer < len(offsets) else None
    if off is not None:
        q = quality(maps(), torch.as_tensor(off), grid)
        row.update(argmax_hit=q["argmax_hit"], target_mass=q["target_mass"])
    return row


def summary(layers: Sequence[dict]) -> dict:
    """The mean of each figure over the layers that have it (None where none has)."""
    out = {}
    for key in FIGURES:
        vals = [row[key] for row in layers if row.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out


def describe(layers: Sequence[dict]) -> str:
    """One line: the mean on-data figures (for logs and reports)."""
    s = summary(layers)
    parts = [f"{name.replace('_', ' ')} {s[name]:.3f}" for name in FIGURES if s[name] is not None]
    return ", ".join(parts) if parts else "no figures"
