"""A built-in image dataset whose classes live in local spatial structure (no download, seeded).

Each class is a small shape of five pixels inside a 5×5 window: a bar in one of four directions, a plus, a
cross, an L, a T, a V, the five of a die. An image holds a few copies of its class's shape at random places, in
random colours, on a plain grey background. Every class lights the same number of pixels in the same colours,
and with patch 2 a shape spans 3×3 tokens, so a single patch sees only a piece of it: recognizing the shape
means relating neighbouring tokens, which a convolution does from the start and a ViT whose attention starts
near uniform has to learn. (The background is plain on purpose: the ViT's patch embedding LayerNorm scales any
pixel noise in a flat patch up to the size of a shape.)

The images are generated when the dataset is built, vectorized, from a seed and the split name; the same
(n, size, seed, split) always gives the same images.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

# Five lit pixels per shape, (row, col) inside a 5×5 window.
SHAPES = {
    "hbar": ((2, 0), (2, 1), (2, 2), (2, 3), (2, 4)),
    "vbar": ((0, 2), (1, 2), (2, 2), (3, 2), (4, 2)),
    "diag": ((0, 0), (1, 1), (2, 2), (3, 3), (4, 4)),
    "anti": ((0, 4), (1, 3), (2, 2), (3, 1), (4, 0)),
    "plus": ((1, 2), (2, 1), (2, 2), (2, 3), (3, 2)),
    "cross": ((1, 1), (1, 3), (2, 2), (3, 1), (3, 3)),
    "ell": ((0, 0), (1, 0), (2, 0), (2, 1), (2, 2)),
    "tee": ((0, 0), (0, 1), (0, 2), (1, 1), (2, 1)),
    "vee": ((0, 0), (1, 1), (2, 2), (1, 3), (0, 4)),
    "dice": ((0, 0), (0, 4), (2, 2), (4, 0), (4, 4)),
}
WINDOW = 5
SPLITS = {"train": 1, "test": 2}


def synthetic_bytes(n: int, image_size: int) -> int:
    """About the memory that generating ``n`` images of side ``image_size`` takes at its peak (float32 canvas and
    the uint8 result, labels and their permutation)."""
    return n * (3 * image_size * image_size * 5 + 64)


def synthetic_shapes(n: int, image_size: int = 32, seed: int = 0, split: str = "train", copies: int = 3,
                     num_classes: int = len(SHAPES)) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 3, S, S) uint8 and labels (n,) int64, balanced over classes, deterministic in (seed, split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    if image_size < WINDOW:
        raise ValueError(f"image_size must be at least {WINDOW} to hold a shape, got {image_size}")
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    from .._validate import require_memory
    require_memory(synthetic_bytes(n, image_size), f"{n} synthetic images of {image_size}x{image_size}",
                   "generate fewer images")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + SPLITS[split])
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    pixels = torch.tensor(list(SHAPES.values()))[:num_classes]                     # (C, 5, 2)
    grey = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    img = grey.expand(n, 3, image_size, image_size).clone()
    corner = torch.randint(0, image_size - WINDOW + 1, (n, copies, 2), generator=gen)
    colour = torch.rand(n, copies, 3, generator=gen)
    colour = colour / colour.amax(-1, keepdim=True)                                 # saturated: max channel 1
    where = corner[:, :, None, :] + pixels[labels][:, None, :, :]                   # (n, copies, 5, 2)
    k = pixels.shape[1]
    sample = torch.arange(n)[:, None, None].expand(n, copies, k)
    img.permute(0, 2, 3, 1)[sample, where[..., 0], where[..., 1]] = colour[:, :, None, :].expand(n, copies, k, 3)
    return (img * 255).round().to(torch.uint8), labels


class SyntheticShapes(torch.utils.data.Dataset):
    """The built-in dataset as a torch Dataset of (transform(uint8 image (3, S, S)), label)."""

    def __init__(self, n: int, image_size: int = 32, seed: int = 0, split: str = "train",
                 transform: Optional[Callable] = None, **kwargs):
        self.images, labels = synthetic_shapes(n, image_size, seed, split, **kwargs)
        self.targets = labels.tolist()
        self.classes = list(SHAPES)[:kwargs.get("num_classes", len(SHAPES))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.targets[i]
