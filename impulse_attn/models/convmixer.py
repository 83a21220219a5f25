"""ConvMixer with its depthwise spatial filters learned, or frozen at a filter bank (docs/METHOD.md,
"Filter banks")."""
from __future__ import annotations

import torch
import torch.nn as nn

from .._validate import as_bool, choice, model_input, odd_kernel_size, positive_int, require_memory, seed_int
from .common import check_backbone
from ..filters import BANKS, filter_bank

FILTER_INITS = ("learned",) + BANKS


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class ConvMixer(nn.Module):
    """ConvMixer: patch conv, then ``depth`` × [depthwise k×k conv (residual), 1×1 conv], pooling, linear head.

    filters: "learned" (PyTorch's init, trained) or a bank from ``filters.BANKS`` ("random", "softmax",
        "impulse", "box", "gaussian"), one filter per channel drawn afresh for each layer.
    freeze: keep the spatial filters fixed (the study's "frozen" setting); only the channel mixing learns.
    box_n: ones per box filter (default k², the rank-deficient averaging box).
    """

    def __init__(self, image_size=32, patch_size=2, num_classes: int = 10, dim: int = 256, depth: int = 8,
                 kernel_size: int = 3, channels: int = 3, filters: str = "learned", freeze: bool = False,
                 box_n=None, seed: int = 0):
        super().__init__()
        (ih, iw), grid, (ph, pw) = check_backbone(image_size, patch_size, num_classes=num_classes, dim=dim,
                                                  depth=depth, channels=channels)
        odd_kernel_size(kernel_size)
        choice(filters, "filters", FILTER_INITS)
        freeze = as_bool(freeze, "freeze")
        seed = seed_int(seed)
        if box_n is not None:
            positive_int(box_n, "box_n")
        # parameters with gradients and Adam moments, and the activations of one image (with their gradients)
        require_memory(16 * (depth * (dim * kernel_size ** 2 + dim * dim + 6 * dim) + channels * ph * pw * dim)
                       + 8 * (channels * ih * iw + 6 * depth * dim * grid[0] * grid[1]),
                       f"a ConvMixer of dim {dim}, depth {depth}", "use a smaller model")
        if freeze and filters == "learned":
            raise ValueError("freeze=True needs a filter bank (filters in "
                             f"{BANKS}); 'learned' filters frozen at PyTorch's init are the 'random' bank")
        self.image_size, self.channels = (ih, iw), channels
        self.filters, self.freeze = filters, freeze
        self.stem = nn.Sequential(nn.Conv2d(channels, dim, kernel_size=(ph, pw), stride=(ph, pw)), nn.GELU(),
                                  nn.BatchNorm2d(dim))
        gen = torch.Generator().manual_seed(seed)
        self.spatial = nn.ModuleList()
        layers = []
        for _ in range(depth):
            dw = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2)
            if filters != "learned":
                with torch.no_grad():
                    bank = filter_bank(filters, dim, kernel_size, box_n=box_n, generator=gen)
                    dw.weight.copy_(bank[:, None])
                    dw.bias.zero_()
                dw.weight.requires_grad_(not freeze)
                dw.bias.requires_grad_(not freeze)
            self.spatial.append(dw)
            layers += [Residual(nn.Sequential(dw, nn.GELU(), nn.BatchNorm2d(dim))),
                       nn.Conv2d(dim, dim, kernel_size=1), nn.GELU(), nn.BatchNorm2d(dim)]
        self.mixer = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, num_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        model_input(img, "img", self.head[-1].weight)
        if img.dim() != 4 or img.shape[1] != self.channels or tuple(img.shape[-2:]) != self.image_size:
            raise ValueError(f"img must have shape (batch, {self.channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(img.shape)}")
        return self.head(self.mixer(self.stem(img)))
