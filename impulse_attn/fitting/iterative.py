"""The published iterative recipe, in plain PyTorch with autograd: the reference every fast fit is held to.

Per layer: Q, K (heads, D, r) start uniform in ±sqrt(1/(r·heads)); Adam (lr 1e-4) minimises the mean squared
error between softmax(s · X Q Kᵀ Xᵀ) and the impulse targets; every ``renorm_every`` steps, starting at step 0
and before the step's update, Q's columns are rescaled to the mean column norm Q had at init, and K likewise
(see ``renormalize``). Layers are batched: the loss is the sum over layers of each layer's mean error, so every
layer gets exactly the gradients of its own independent fit.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .spec import RENORM_MODES


def init_qk(layers: int, heads: int, dim: int, head_dim: int, generator: torch.Generator,
            dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The published init: Q and K uniform in ±sqrt(1/(r·heads)), shape (layers, heads, D, r)."""
    bound = math.sqrt(1.0 / (head_dim * heads))
    q = (2 * torch.rand(layers, heads, dim, head_dim, generator=generator, dtype=torch.float64) - 1) * bound
    k = (2 * torch.rand(layers, heads, dim, head_dim, generator=generator, dtype=torch.float64) - 1) * bound
    return q.to(dtype), k.to(dtype)


def init_norm(q: torch.Tensor) -> torch.Tensor:
    """Per layer, the mean over heads and columns of Q's column norms (over D): shape (layers, 1, 1, 1)."""
    return q.norm(dim=-2).mean(dim=(-1, -2)).reshape(q.shape[0], 1, 1, 1)


@torch.no_grad()
def renormalize(q: torch.Tensor, k: torch.Tensor, target_norm: torch.Tensor, mode: str) -> None:
    """Rescale Q and K in place so the logit scale stays where the init put it.

    ``"code"`` (the public code): Q's columns (norm over D) and K's rows (norm over r; the code stores K as
    (heads, r, D) and normalises over r) are set to the init's mean Q column norm. ``"columns"`` (the paper's
    wording): the columns of both Q and K. ``"none"``: nothing.
    """
    if mode == "none":
        return
    q.mul_(target_norm / q.norm(dim=-2, keepdim=True))
    k_axis = -1 if mode == "code" else -2
    k.mul_(target_norm / k.norm(dim=k_axis, keepdim=True))


def fit_loss(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor,
             scale: float) -> torch.Tensor:
    """Sum over layers of the per-layer mean squared error of softmax(s · X Q Kᵀ Xᵀ) against the targets."""
    maps = torch.softmax(scale * (x @ q) @ (x @ k).transpose(-1, -2), dim=-1)
    return ((maps - targets) ** 2).mean(dim=(-1, -2, -3)).sum()


def fit_iterative_reference(x: torch.Tensor, targets: torch.Tensor, rank: int, *, steps: int = 10000,
                            lr: float = 1e-4, scale: float = 0.1, renorm_every: int = 100,
                            renorm: str = "code", generator: Optional[torch.Generator] = None,
                            q0: Optional[torch.Tensor] = None, k0: Optional[torch.Tensor] = None,
                            progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the recipe. x (N, D), targets (layers, heads, N, N) -> Q, K (layers, heads, D, r), float32.

    Inputs are trusted (``fit_impulse`` validates). ``q0``/``k0`` override the random init (parity tests).
    """
    layers, heads = targets.shape[:2]
    if q0 is None or k0 is None:
        q0, k0 = init_qk(layers, heads, x.shape[1], rank, generator)
    q = q0.detach().clone().to(x.dtype).requires_grad_(True)
    k = k0.detach().clone().to(x.dtype).requires_grad_(True)
    norm0 = init_norm(q.detach())
    opt = torch.optim.Adam([q, k], lr=lr)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="impulse fit (reference)", unit="step", leave=False)
    for step in it:
        if renorm_every > 0 and step % renorm_every == 0:
            renormalize(q.data, k.data, norm0, renorm)
        opt.zero_grad(set_to_none=True)
        loss = fit_loss(x, q, k, targets, scale)
        loss.backward()
        opt.step()
    return q.detach(), k.detach()
