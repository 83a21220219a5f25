"""The fixed 2D sin-cos positional encoding of the Simple ViT backbone."""
from __future__ import annotations

import torch

from .._validate import float_dtype, grid_pair, positive_float, positive_int, require_memory


def sincos_2d(grid_size, dim: int, temperature: float = 10000.0, dtype=torch.float32,
              device=None) -> torch.Tensor:
    """2D sin-cos encoding P of shape (H*W, dim), tokens in row-major order.

    Columns are ``[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]`` with ``x`` the column index, ``y`` the row index
    and ``ω_i = temperature^(-i/(dim/4 - 1))``: the layout of the Simple ViT and of the paper's code.
    """
    h, w = grid_pair(grid_size)
    dim = positive_int(dim, "dim")
    temperature = positive_float(temperature, "temperature")
    float_dtype(dtype)
    if dim % 4 != 0 or dim < 8:
        raise ValueError(f"dim must be a multiple of 4 and >= 8 for the 2D sin-cos encoding, got {dim}")
    require_memory(h * w * dim * (16 + dtype.itemsize), f"the sin-cos encoding of a {h}x{w} grid of width {dim}",
                   "use a smaller grid or width", device)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    omega = torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1)
    omega = 1.0 / (temperature ** omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    pe = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)
    return pe.to(dtype=dtype, device=device)
