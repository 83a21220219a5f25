"""Argument checks shared by the public API.

Every public function calls these before doing any work, so bad input fails with a message that names the
argument and what was expected instead of a shape error deep inside a matmul.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import torch


def grid_pair(grid_size, name: str = "grid_size") -> Tuple[int, int]:
    """Normalize an int or (H, W) pair to a tuple of two positive ints."""
    if isinstance(grid_size, bool):
        raise TypeError(f"{name} must be an int or a pair (H, W) of ints, got {grid_size!r}")
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    if isinstance(grid_size, torch.Size):
        grid_size = tuple(grid_size)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise TypeError(f"{name} must be an int or a pair (H, W) of ints, got {grid_size!r}")
    h, w = grid_size
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must hold positive ints, got {grid_size!r}")
    return int(h), int(w)


def positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def odd_kernel_size(value, name: str = "kernel_size") -> int:
    positive_int(value, name)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (the window is centred on the token), got {value}")
    return value


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def choice(value, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def finite_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def image_grid(image_size, patch_size) -> tuple:
    """Validate an image size and patch size; return ((H, W), token grid (H/ph, W/pw))."""
    ih, iw = grid_pair(image_size, "image_size")
    ph, pw = grid_pair(patch_size, "patch_size")
    if ih % ph or iw % pw:
        raise ValueError(f"image_size {(ih, iw)} must be divisible by patch_size {(ph, pw)}")
    return (ih, iw), (ih // ph, iw // pw)
