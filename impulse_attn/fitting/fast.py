"""A faster iterative fit that is NOT the published recipe: shared targets fitted once, and early stopping.

Every report of this fit says so (``report.extra["algorithm"]``). Both shortcuts are opt-in (``fit_impulse(...,
dedup=True)`` and ``tol=...``) and each changes the result in one stated way:

- dedup: heads whose targets are identical (offsets drawn with replacement repeat: 48 heads from a 5×5 window
  hold at most 25 distinct ones) are fitted once. Every copy receives the fit of the first head, in layer-major
  order, with that target: exactly that head's faithful iterates, since heads never interact (the layer loss is a
  mean over heads, Adam is element-wise, the renormalization target is fixed at init; the per-head gradient
  keeps the layer's 1/heads factor). What changes: copies share one Q, K instead of starting from their own init.
- early stop: every ``check_every`` steps each head's loss (at that step's forward pass) is compared with the
  previous check; a head whose relative improvement is below ``tol`` stops there and keeps its Q, K. Until it
  stops, a head's iterates are the faithful ones: a run resumes with the same Adam moments, the same step counter
  (bias correction) and the same renormalization phase, so chunked and uninterrupted runs agree bit for bit.

The steps run through the compiled kernels (``fitting.compiled.run_steps``) or, without them, their plain-PyTorch
twin (``fitting.reduced.run_steps``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import reduced
from .iterative import init_norm

ALGORITHM = "fast iterative (shared targets fitted once, early stop): not the published recipe"


@dataclass
class FastFitInfo:
    distinct_heads: int      # fits actually run
    total_heads: int
    steps_run: torch.Tensor  # (layers, heads): steps each head's fit ran before it stopped
    steps_requested: int
    algorithm: str = ALGORITHM

    def as_dict(self) -> dict:
        return {"algorithm": self.algorithm, "distinct_heads": self.distinct_heads,
                "total_heads": self.total_heads, "steps_run_max": int(self.steps_run.max()),
                "steps_run_min": int(self.steps_run.min()),
                "stopped_early": int((self.steps_run < self.steps_requested).sum())}


def representatives(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For targets (L, H, N, N): the flat (layer-major) index of the first head of every distinct target, and for
    every head the position of its target among those. Heads with equal targets share a representative."""
    flat = targets.reshape(targets.shape[0] * targets.shape[1], -1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    order = torch.arange(flat.shape[0])
    first = torch.full((int(inverse.max()) + 1,), flat.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, order, reduce="amin")
    # Renumber the distinct targets by first appearance so the fitted batch is in layer-major order too.
    rank_of = torch.empty_like(first)
    sorted_first, perm = first.sort()
    rank_of[perm] = torch.arange(first.numel())
    return sorted_first, rank_of[inverse]


def fit_iterative_fast(x: torch.Tensor, targets: torch.Tensor, rank: int, *, q0: torch.Tensor, k0: torch.Tensor,
                       steps: int, lr: float, scale: float, renorm_every: int, renorm: str, dedup: bool = True,
                       tol: Optional[float] = None, check_every: int = 100, backend: str = "reference",
                       basis_rtol: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, FastFitInfo]:
    """x (N, D), targets (L, H, N, N), q0/k0 (L, H, D, r) -> Q, K (L, H, D, r) float32 and what was run.

    ``backend``: "cpp" / "cuda" (compiled kernels) or "reference" (the reduced-basis PyTorch twin). Inputs are
    trusted (``fit_impulse`` validates).
    """
    layers, heads, n, _ = targets.shape
    dim = x.shape[1]
    total = layers * heads
    if dedup:
        reps, which = representatives(targets)
    else:
        reps, which = torch.arange(total), torch.arange(total)
    if backend in ("cpp", "cuda"):
        from . import compiled as fit_ext
        device = torch.device("cuda" if backend == "cuda" else "cpu")
        stepper = fit_ext.run_steps
    else:
        device = torch.device("cpu")
        stepper = reduced.run_steps
    to = dict(device=device, dtype=torch.float32)
    a, b = (t.to(**to) for t in reduced.factor_basis(x, basis_rtol, torch.float32))
    norm0 = init_norm(q0.to(torch.float32)).reshape(-1)
    # The distinct fits run as a batch of one-head "layers"; loss_heads keeps each one's 1/heads factor.
    t_u = targets.reshape(total, 1, n, n)[reps].to(**to).contiguous()
    q_u = q0.reshape(total, 1, dim, rank)[reps].to(**to).contiguous()
    k_u = k0.reshape(total, 1, dim, rank)[reps].to(**to).contiguous()
    n0_u = norm0[reps // heads].to(**to).contiguous()
    state = [q_u, k_u] + [torch.zeros_like(q_u) for _ in range(4)]
    steps_run = torch.zeros(reps.numel(), dtype=torch.long)
    active = torch.arange(reps.numel())
    prev = None
    step = 0
    while step < steps and active.numel() > 0:
        chunk = steps - step if tol is None else min(check_every, steps - step)
        idx = active.to(device)
        sub = tuple(s[idx].contiguous() for s in state)
        new, loss = stepper(a, b, t_u[idx].contiguous(), sub, n0_u[idx].contiguous(), step, chunk, lr=lr,
                            scale=scale, renorm_every=renorm_every, renorm=renorm, loss_heads=heads)
        for s, s_new in zip(state, new):
            s[idx] = s_new
        step += chunk
        steps_run[active] = step
        if tol is not None:
            cur = loss[:, 0].double().cpu()
            if prev is None:
                keep = torch.ones_like(cur, dtype=torch.bool)
            else:
                keep = (prev - cur) > tol * prev.abs()
            prev, active = cur[keep], active[keep]
    q = state[0].cpu()[which].reshape(layers, heads, dim, rank)
    k = state[1].cpu()[which].reshape(layers, heads, dim, rank)
    info = FastFitInfo(distinct_heads=int(reps.numel()), total_heads=total,
                       steps_run=steps_run[which].reshape(layers, heads), steps_requested=steps)
    return q, k, info
