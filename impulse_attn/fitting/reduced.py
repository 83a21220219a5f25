"""The published recipe in a reduced basis, in plain PyTorch: the algebra the compiled kernels implement.

P enters the loss softmax(s · X Q Kᵀ Xᵀ) only through products, and X (the 2D sin-cos encoding, N×D) has small
numerical rank k (27 for a 16×16 grid at float32 resolution, whatever D is). With X = A·B (A: N×k, B: k×D, from
the SVD) every product goes through the factors:

    BQ = B·Q, BK = B·K (k×r)      core = s·BQ·BKᵀ (k×k)      logits = A·core·Aᵀ
    G = d loss / d logits          C = Aᵀ·G·A                 dBQ = C·BK, dBK = Cᵀ·BQ
    dQ = Bᵀ·dBQ, dK = Bᵀ·dBK

Adam and the renormalization still act on the full D×r Q and K, so the iterates are the recipe's: in float64 they
match the autograd reference to 1e-13; in float32 they differ only by rounding. The matmul work per step drops from
about 4·N·D·r + 3·N²·r to 4·k·D·r + 2·N²·k multiply-adds (6× less at the paper's size).

``run_steps`` has the signature of ``impulse_attn.fitting.compiled.run_steps`` (the fused kernel) and is its
PyTorch twin: tests compare the two, and the non-faithful fast fit (``fitting.fast``) falls back to it when the
extension is not built.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .iterative import RENORM_MODES, init_norm, init_qk, renormalize

DEFAULT_RTOL = {torch.float32: 1e-8, torch.float64: 1e-13}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def factor_basis(x: torch.Tensor, rtol: Optional[float] = None,
                 dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """X (N, D) -> A (N, k), B (k, D) with X = A·B up to the dropped singular values (all below rtol·σ_max).

    A = U_k Σ_k and B = V_kᵀ from the SVD of X in float64, so B has orthonormal rows and B·Q keeps Q's scale.
    The default rtol (1e-8 for float32, 1e-13 for float64) drops only what the working precision cannot see.
    Inputs are trusted (its callers in ``compiled`` check them).
    """
    if rtol is None:
        rtol = DEFAULT_RTOL[dtype]
    u, s, vh = torch.linalg.svd(x.detach().to(device="cpu", dtype=torch.float64), full_matrices=False)
    keep = s > rtol * s[0]
    keep[0] = True  # X = 0 still gets a (zero) one-dimensional basis
    return (u[:, keep] * s[keep]).to(dtype).contiguous(), vh[keep].to(dtype).contiguous()


def factored_gradients(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       scale: float, loss_heads: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d loss / d Q, K through the factors, no autograd. Shapes: a (N, k), b (k, D), targets (L, H, N, N),
    q, k (L, H, D, r). loss = Σ_layers mean over loss_heads·N·N (loss_heads 0: H). Returns dq, dk and each head's
    mean over N² of (p − t)²."""
    n = targets.shape[-1]
    heads = loss_heads or targets.shape[1]
    bq, bk = b @ q, b @ k
    core = scale * (bq @ bk.transpose(-1, -2))
    p = torch.softmax(a @ core @ a.T, dim=-1)
    diff = p - targets
    dp = (2.0 / (heads * n * n)) * diff
    g = scale * (p * (dp - (dp * p).sum(-1, keepdim=True)))
    c = a.T @ g @ a
    dq = b.T @ (c @ bk)
    dk = b.T @ (c.transpose(-1, -2) @ bq)
    return dq, dk, (diff ** 2).mean(dim=(-1, -2))


@torch.no_grad()
def adam_update_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
                 betas=ADAM_BETAS, eps: float = ADAM_EPS) -> None:
    """One torch.optim.Adam step (defaults, single-tensor path) in place: the same operations in the same order."""
    beta1, beta2 = betas
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    denom = (v.sqrt() / bias_correction2 ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-(lr / bias_correction1))


@torch.no_grad()
def run_steps(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, state: tuple, norm0: torch.Tensor,
              step0: int, steps: int, *, lr: float, scale: float, renorm_every: int, renorm: str,
              loss_heads: int = 0) -> tuple:
    """Advance (q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k) by ``steps`` Adam steps from step
    ``step0``; norm0 (layers,). Returns the new state (fresh tensors) and each head's loss at the last forward."""
    q, k, mq, vq, mk, vk = (t.clone() for t in state)
    target_norm = norm0.reshape(-1, 1, 1, 1).to(q.dtype)
    loss = torch.zeros(q.shape[:2], dtype=q.dtype)
    for step in range(step0, step0 + steps):
        if renorm_every > 0 and step % renorm_every == 0:
            renormalize(q, k, target_norm, renorm)
        dq, dk, loss = factored_gradients(a, b, targets, q, k, scale, loss_heads)
        adam_update_(q, dq, mq, vq, step + 1, lr)
        adam_update_(k, dk, mk, vk, step + 1, lr)
    return (q, k, mq, vq, mk, vk), loss


def fit_iterative_factored(x: torch.Tensor, targets: torch.Tensor, rank: int, *, steps: int = 10000,
                           lr: float = 1e-4, scale: float = 0.1, renorm_every: int = 100, renorm: str = "code",
                           generator: Optional[torch.Generator] = None, q0: Optional[torch.Tensor] = None,
                           k0: Optional[torch.Tensor] = None, basis_rtol: Optional[float] = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe of ``fit_iterative_reference`` (same arguments, same iterates up to rounding), computed in the
    reduced basis. Runs in x's dtype. Inputs are trusted."""
    if renorm not in RENORM_MODES:
        raise ValueError(f"renorm must be one of {RENORM_MODES}, got {renorm!r}")
    layers, heads = targets.shape[:2]
    dtype = x.dtype
    if q0 is None or k0 is None:
        q0, k0 = init_qk(layers, heads, x.shape[1], rank, generator or torch.Generator().manual_seed(0))
    a, b = factor_basis(x, basis_rtol, dtype)
    q, k = q0.detach().to(dtype), k0.detach().to(dtype)
    zeros = [torch.zeros_like(q) for _ in range(4)]
    state, _ = run_steps(a, b, targets.to(dtype), (q, k, *zeros), init_norm(q).reshape(-1), 0, steps, lr=lr,
                         scale=scale, renorm_every=renorm_every, renorm=renorm)
    return state[0], state[1]
