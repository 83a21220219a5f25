"""Banks of k×k spatial filters, the filter families compared in the ConvMixer study (docs/METHOD.md,
"Filter banks")."""
from __future__ import annotations

from typing import Optional

import torch

from .._validate import (choice, float_dtype, odd_kernel_size, optional_generator, positive_float, positive_int,
                         require_memory, seed_int)

BANKS = ("random", "softmax", "impulse", "box", "gaussian")


def filter_bank(kind: str, num_filters: int, kernel_size: int = 3, *, box_n: Optional[int] = None,
                sigma: float = 1.0, generator: Optional[torch.Generator] = None, seed: int = 0,
                dtype=torch.float32) -> torch.Tensor:
    """A bank of ``num_filters`` k×k filters, shape (num_filters, k, k).

    kind:
        ``"random"``   uniform in ±1/k;
        ``"softmax"``  softmax over the window of a standard-normal draw;
        ``"impulse"``  a single 1 at a random position of the window;
        ``"box"``      ``box_n`` ones at random distinct positions (``box_n = k²`` is the averaging box, which
                       is rank one and fails as a bank); default ``box_n = k²``;
        ``"gaussian"`` an isotropic Gaussian blob (std ``sigma``) at a random centre of the window, sum 1.
    """
    choice(kind, "kind", BANKS)
    num_filters = positive_int(num_filters, "num_filters")
    k = odd_kernel_size(kernel_size)
    seed = seed_int(seed)
    optional_generator(generator)
    float_dtype(dtype)
    if kind == "box" and box_n is not None:
        positive_int(box_n, "box_n")
    if kind == "gaussian":
        positive_float(sigma, "sigma")
    require_memory(32 * num_filters * k * k, f"a bank of {num_filters} {k}x{k} filters", "use fewer filters")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    kk = k * k
    if kind == "random":
        bank = (torch.rand(num_filters, kk, generator=generator, dtype=torch.float64) * 2 - 1) / k
    elif kind == "softmax":
        bank = torch.randn(num_filters, kk, generator=generator, dtype=torch.float64).softmax(-1)
    elif kind == "impulse":
        pos = torch.randint(0, kk, (num_filters,), generator=generator)
        bank = torch.nn.functional.one_hot(pos, kk).to(torch.float64)
    elif kind == "box":
        n = kk if box_n is None else positive_int(box_n, "box_n")
        if n > kk:
            raise ValueError(f"box_n must be <= kernel_size**2 = {kk}, got {n}")
        scores = torch.rand(num_filters, kk, generator=generator)
        idx = scores.argsort(dim=1)[:, :n]
        bank = torch.zeros(num_filters, kk, dtype=torch.float64).scatter_(1, idx, 1.0)
    else:
        positive_float(sigma, "sigma")
        centres = torch.randint(0, kk, (num_filters,), generator=generator)
        cy, cx = (centres // k).double(), (centres % k).double()
        yy, xx = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64),
                                indexing="ij")
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        bank = torch.exp(-d2 / (2 * sigma ** 2)).reshape(num_filters, kk)
        bank = bank / bank.sum(1, keepdim=True)
    return bank.reshape(num_filters, k, k).to(dtype)
