"""Is a filter bank a good fixed basis? Linear independence (rank) and redundancy (copies per position)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from .._validate import float_tensor, positive_float


@dataclass(frozen=True)
class BankReport:
    rank: int                       # rank of the bank over the k² filter space
    full_rank: bool                 # rank == k²: the bank spans every k×k filter
    num_filters: int
    kernel_size: int
    impulse_counts: Dict[Tuple[int, int], int]  # for impulse-like filters: how many share each argmax position
    min_redundancy: int             # fewest filters sharing one window position (0 when a position is missing)


def bank_report(bank: torch.Tensor, tol: float = 1e-8) -> BankReport:
    """Rank of a (F, k, k) bank and how many filters peak at each window position.

    A bank can reproduce any spatial filter through channel mixing only when it is full rank (k² independent
    filters); redundancy (several filters per position) is what lets a wide model do so per channel.
    """
    if not isinstance(bank, torch.Tensor) or bank.dim() != 3 or bank.shape[1] != bank.shape[2]:
        shape = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
        raise ValueError(f"bank must be a tensor of shape (F, k, k), got {shape}")
    float_tensor(bank, "bank")
    tol = positive_float(tol, "tol")
    f, k, _ = bank.shape
    flat = bank.reshape(f, k * k).double()
    s = torch.linalg.svdvals(flat)
    rank = int((s > tol * max(float(s[0]) if s.numel() else 0.0, 1e-300)).sum())
    peaks = flat.abs().argmax(dim=1)
    counts = torch.bincount(peaks, minlength=k * k)
    half = k // 2
    impulse_counts = {(i // k - half, i % k - half): int(c) for i, c in enumerate(counts.tolist())}
    return BankReport(rank=rank, full_rank=rank == k * k, num_filters=f, kernel_size=k,
                      impulse_counts=impulse_counts, min_redundancy=int(counts.min()))
