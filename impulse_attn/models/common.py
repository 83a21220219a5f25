"""What both backbones check before they allocate anything."""
from __future__ import annotations

from .._validate import image_grid, positive_int


def check_backbone(image_size, patch_size, **positive) -> tuple:
    """Validate the image/patch geometry and positive integer sizes (by name); returns ((H, W), grid, patch)."""
    (ih, iw), grid = image_grid(image_size, patch_size)
    for name, value in positive.items():
        positive_int(value, name)
    return (ih, iw), grid, (ih // grid[0], iw // grid[1])
