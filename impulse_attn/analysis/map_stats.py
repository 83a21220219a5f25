"""Per-head statistics of attention maps on a token grid.

For maps ``p`` (B, heads, N, N) over an H×W grid (row-major tokens), per head, averaged over images and queries:

- ``target_mass``: attention on the token at the head's impulse offset (only where the offset is known and the
  shifted token is inside the grid): how much of the init's impulse survives.
- ``best_offset`` / ``best_offset_mass``: the offset (dy, dx) of the k×k window that receives the most attention
  on average, and that mass. A head that behaves like one tap of a convolution has a large mass at one offset,
  whatever its init; a random-init ViT that *grows* convolution-like heads shows it here.
- ``local_mass``: attention inside the k×k window around the query.
- ``distance``: mean attention distance Σ_j p_ij·‖pos_i − pos_j‖ in tokens (as in Dosovitskiy et al.).
- ``entropy``: mean entropy of the rows in nats (log N for a uniform map).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .._validate import grid_pair, odd_kernel_size


@dataclass
class HeadStats:
    layer: int
    head: int
    target_offset: Optional[Tuple[int, int]]
    target_mass: Optional[float]
    best_offset: Tuple[int, int]
    best_offset_mass: float
    local_mass: float
    distance: float
    entropy: float

    def as_dict(self) -> dict:
        return asdict(self)


def _coords(grid) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = grid
    return torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)


def _offset_mass(p: torch.Tensor, grid, dy: int, dx: int) -> torch.Tensor:
    """Mean mass at query + (dy, dx) over the queries whose shifted token is inside the grid: (heads,)."""
    h, w = grid
    rows, cols = _coords(grid)
    r2, c2 = rows + dy, cols + dx
    valid = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
    if not bool(valid.any()):
        return torch.zeros(p.shape[1], dtype=p.dtype)
    src = torch.nonzero(valid).squeeze(1)
    dst = (r2 * w + c2)[valid]
    return p[:, :, src, dst].mean(dim=(0, 2))


@torch.no_grad()
def head_stats(maps: Sequence[torch.Tensor], grid, kernel_size: int = 5,
               offsets: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[HeadStats]:
    """Statistics of every head of every layer. maps: per layer (B, heads, N, N); offsets: per layer (heads, 2)
    impulse offsets, or None where unknown."""
    grid = grid_pair(grid, "grid")
    k = odd_kernel_size(kernel_size)
    rows, cols = _coords(grid)
    n = grid[0] * grid[1]
    dist = ((rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2).double().sqrt()
    window = ((rows[:, None] - rows[None, :]).abs() <= k // 2) & ((cols[:, None] - cols[None, :]).abs() <= k // 2)
    out = []
    for li, p in enumerate(maps):
        if p.dim() != 4 or p.shape[-1] != n or p.shape[-2] != n:
            raise ValueError(f"maps[{li}] must have shape (B, heads, {n}, {n}) for grid {grid}, got {tuple(p.shape)}")
        p = p.double()
        shifts = [(dy, dx) for dy in range(-(k // 2), k // 2 + 1) for dx in range(-(k // 2), k // 2 + 1)]
        per_shift = torch.stack([_offset_mass(p, grid, dy, dx) for dy, dx in shifts])      # (k², heads)
        best = per_shift.argmax(0)
        local = (p * window).sum(-1).mean(dim=(0, 2))
        distance = (p * dist).sum(-1).mean(dim=(0, 2))
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 2))
        offs = offsets[li] if offsets is not None else None
        for h in range(p.shape[1]):
            t_off = t_mass = None
            if offs is not None:
                t_off = (int(offs[h][0]), int(offs[h][1]))
                t_mass = float(_offset_mass(p[:, h:h + 1], grid, *t_off)[0])
            out.append(HeadStats(layer=li, head=h, target_offset=t_off, target_mass=t_mass,
                                 best_offset=shifts[int(best[h])], best_offset_mass=float(per_shift[best[h], h]),
                                 local_mass=float(local[h]), distance=float(distance[h]), entropy=float(entropy[h])))
    return out


@torch.no_grad()
def map_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Mean total-variation distance ½·Σ_j |p_ij − p'_ij| between two sets of maps (B, heads, N, N): (heads,).
    0 = unchanged, 1 = disjoint supports."""
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {tuple(before.shape)} and "
                         f"{tuple(after.shape)}")
    return 0.5 * (before.double() - after.double()).abs().sum(-1).mean(dim=(0, 2))
