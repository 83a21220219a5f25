"""Impulse (shift) targets: the hard attention map of a k×k impulse filter, one per head."""
from __future__ import annotations

from typing import Optional

import torch

from .._validate import (float_dtype, grid_pair, odd_kernel_size, optional_generator, positive_int, require_memory,
                         seed_int)


def kernel_fits_grid(kernel_size: int, grid_size) -> None:
    """A k×k window's offsets reach ±(k//2) tokens: wider than the grid, most heads would shift every token out."""
    h, w = grid_pair(grid_size)
    if kernel_size // 2 >= max(h, w):
        raise ValueError(f"kernel_size {kernel_size} is wider than the {h}x{w} token grid allows (offsets up to "
                         f"±{kernel_size // 2}); use kernel_size <= {2 * max(h, w) - 1}")


def draw_offsets(num_heads: int, kernel_size: int = 5, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None) -> torch.Tensor:
    """Draw one (row, col) offset per head uniformly from the k×k window, with replacement (as published).

    Returns a long tensor (num_heads, 2) with entries in ``[-(k//2), k//2]``.
    """
    num_heads = positive_int(num_heads, "num_heads")
    kernel_size = odd_kernel_size(kernel_size)
    optional_generator(generator)
    seed = 0 if seed is None else seed_int(seed)
    require_memory(32 * num_heads, f"offsets for {num_heads} heads", "use fewer heads")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    flat = torch.randint(0, kernel_size * kernel_size, (num_heads,), generator=generator)
    half = kernel_size // 2
    return torch.stack((flat // kernel_size - half, flat % kernel_size - half), dim=1)


def cycle_offsets(num_heads: int, kernel_size: int = 3) -> torch.Tensor:
    """Deterministic offsets that cycle through the k×k window (the 2505.19985 code's choice)."""
    positive_int(num_heads, "num_heads")
    odd_kernel_size(kernel_size)
    flat = torch.arange(num_heads) % (kernel_size * kernel_size)
    half = kernel_size // 2
    return torch.stack((flat // kernel_size - half, flat % kernel_size - half), dim=1)


def check_offsets(offsets, kernel_size: Optional[int] = None) -> torch.Tensor:
    """Validate user-given offsets: an int tensor or nested sequence of shape (heads, 2)."""
    t = torch.as_tensor(offsets)
    if t.dim() != 2 or t.shape[1] != 2 or t.shape[0] < 1:
        raise ValueError(f"offsets must have shape (heads, 2), got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"offsets must be integers, got dtype {t.dtype}")
    t = t.long()
    if kernel_size is not None:
        half = kernel_size // 2
        if bool((t.abs() > half).any()):
            raise ValueError(f"offsets must lie in the {kernel_size}x{kernel_size} window "
                             f"[-{half}, {half}], got {t.tolist()}")
    return t


def impulse_targets(offsets, grid_size, dtype=torch.float32, device=None) -> torch.Tensor:
    """Hard attention maps T (heads, N, N) for pure shifts on an H×W token grid.

    ``T[h, (r, c), (r+m, c+n)] = 1`` for the head's offset (m, n) when (r+m, c+n) is inside the grid; the whole
    row is zero when the shift leaves the grid (zero padding).
    """
    offsets = check_offsets(offsets)
    h, w = grid_pair(grid_size)
    float_dtype(dtype)
    n = h * w
    require_memory(offsets.shape[0] * n * n * dtype.itemsize, f"{offsets.shape[0]} impulse maps of {n}x{n}",
                   "use fewer heads or a smaller grid", device)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    heads = offsets.shape[0]
    target = torch.zeros(heads, n, n, dtype=dtype, device=device)
    for i, (m, dn) in enumerate(offsets.tolist()):
        r2, c2 = rows + m, cols + dn
        valid = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        src = torch.nonzero(valid).squeeze(1)
        dst = r2[valid] * w + c2[valid]
        target[i, src.to(target.device), dst.to(target.device)] = 1
    return target


def valid_rows(offsets, grid_size) -> torch.Tensor:
    """Bool mask (heads, N): rows whose shifted position is inside the grid."""
    offsets = check_offsets(offsets)
    h, w = grid_pair(grid_size)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    m = offsets[:, 0:1]
    dn = offsets[:, 1:2]
    r2, c2 = rows[None] + m, cols[None] + dn
    return (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)


def separable_logit_target(offsets, grid_size, dtype=torch.float64) -> torch.Tensor:
    """Additive logits L (heads, N, N): 1 where the row shift matches plus 1 where the column shift matches.

    The 2D sin-cos encoding is a sum of x-only and y-only features, so a bilinear form in it can express
    ``a(x_i, x_j) + b(y_i, y_j)`` but not their product; exp of this sum is the product of a row impulse and a
    column impulse, i.e. a 2D impulse. This is what the closed-form fit projects.
    """
    dr, dc = _target_deltas(offsets, grid_size)
    return (dr == 0).to(dtype) + (dc == 0).to(dtype)


def _target_deltas(offsets, grid_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column distance of every key token from each query's target: (heads, N, N) each."""
    offsets = check_offsets(offsets)
    h, w = grid_pair(grid_size)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    dr = rows[None, None, :] - rows[None, :, None] - offsets[:, 0, None, None]
    dc = cols[None, None, :] - cols[None, :, None] - offsets[:, 1, None, None]
    return dr, dc


TARGET_SHAPES = ("impulse", "laplace")


def logit_target(offsets, grid_size, shape: str = "impulse", dtype=torch.float64) -> torch.Tensor:
    """Target logits (heads, N, N) for the closed-form fit, up to the scale β the fit calibrates.

    Both shapes are a row term plus a column term (what a bilinear form in the 2D sin-cos encoding can express)
    and both peak at the head's offset:

    - ``"impulse"``: ``separable_logit_target``, 1 where the row shift matches plus 1 where the column shift
      matches. exp of it is a 2D impulse, but off the target it is a cross: every token on the target's row or
      column gets the same logit, however far it is.
    - ``"laplace"``: ``−(|Δr − m| + |Δc − n|)``, minus the city-block distance to the target. exp of it is a
      local blob that decays with distance from the target in every direction, as the maps of the published
      iterative recipe do (their mean logit falls monotonically with the distance to the target).
    """
    if shape == "impulse":
        return separable_logit_target(offsets, grid_size, dtype)
    if shape != "laplace":
        raise ValueError(f"shape must be one of {TARGET_SHAPES}, got {shape!r}")
    dr, dc = _target_deltas(offsets, grid_size)
    return -(dr.abs() + dc.abs()).to(dtype)


def target_quality(maps: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, keep=None, share=None) -> dict:
    """How impulse-like maps (..., N, N) are against target columns ``target`` (..., N) over the rows ``valid``
    (..., N) (both broadcast against the maps' leading dims) that ``keep(maps, target_weight)`` accepts (default:
    all): the share whose argmax is the target (``argmax_hit``) and the mean ``share(maps, target_weight)``
    (default: the target weight; ``target_mass``), over those rows, and how many rows that is. The one
    definition the fit reports, the init reports and the prior on data use."""
    m = maps.to(torch.float64)
    target = target.to(m.device).expand(m.shape[:-1])
    weight = m.gather(-1, target[..., None])[..., 0]
    ok = valid.to(m.device).expand(m.shape[:-1])
    if keep is not None:
        ok = ok & keep(m, weight)
    rows = max(int(ok.sum()), 1)
    mass = weight if share is None else share(m, weight)
    return {"argmax_hit": int(((m.argmax(-1) == target) & ok).sum()) / rows,
            "target_mass": float((mass * ok).sum()) / rows, "rows": int(ok.sum())}
