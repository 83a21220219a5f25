"""A k×k convolution written as the N×N matrix it applies to the token axis."""
from __future__ import annotations

import torch

from .._validate import float_tensor, grid_pair, require_memory


def conv_as_attention(weight: torch.Tensor, grid) -> torch.Tensor:
    """The exact N×N matrix (N = H·W) of a zero-padded 'same' k×k convolution on an H×W grid.

    ``weight`` is (k, k) or a bank (F, k, k), k odd. For tokens ``x`` of shape (..., N) flattened row-major,
    ``M @ x`` equals ``F.conv2d(x.view(1, 1, H, W), weight[None, None], padding=k//2).flatten()`` (PyTorch's
    conv2d is a cross-correlation: output(r, c) = Σ w[a, b]·x(r + a − k//2, c + b − k//2)).
    Returns (N, N) or (F, N, N), in the weight's dtype.
    """
    float_tensor(weight, "weight")
    single = weight.dim() == 2
    if single:
        weight = weight[None]
    if weight.dim() != 3 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ValueError(f"weight must be (k, k) or (F, k, k) with k odd, got shape {tuple(weight.shape)}")
    h, w = grid_pair(grid, "grid")
    k = weight.shape[-1]
    half = k // 2
    n = h * w
    require_memory(weight.shape[0] * n * n * weight.element_size(), f"{weight.shape[0]} {n}x{n} matrices",
                   "use a smaller grid", weight.device)
    rows = torch.arange(h, device=weight.device).repeat_interleave(w)
    cols = torch.arange(w, device=weight.device).repeat(h)
    out = torch.zeros(weight.shape[0], n, n, dtype=weight.dtype, device=weight.device)
    src = torch.arange(n, device=weight.device)
    for a in range(k):
        for b in range(k):
            r2, c2 = rows + a - half, cols + b - half
            valid = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
            dst = (r2 * w + c2)[valid]
            out[:, src[valid], dst] += weight[:, a, b][:, None]
    return out[0] if single else out
