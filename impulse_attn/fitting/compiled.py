"""The compiled fit's Python face: ``torch.ops.impulse_attn.fit_iterative`` / ``fit_gradients`` (csrc/), their
fake implementations for ``torch.compile`` / ``opcheck``, and thin wrappers.

The ops take the pseudo-input X (N, D) in factored form X = A·B (``reduced.factor_basis``: the 2D sin-cos encoding
of a 16×16 grid has numerical rank 27 at float32 resolution whatever D is), so every product goes through the
factors while Adam and the renormalization act on the full D×r Q and K: the iterates are the published recipe's
up to rounding (``reduced.run_steps`` is the PyTorch twin). Adam's β and ε are the op schema's defaults, which
``csrc/fit_constants.h`` defines once for the CPU code, the CUDA code and the schema.

Inputs are trusted here: ``fit_impulse`` validates them (``spec.make_spec``) and the C++ op checks them again
(TORCH_CHECK). Importing this module never fails; without the extension ``available()`` says why.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import reduced
from .iterative import init_norm
from .spec import RENORM_MODES

try:
    from .. import _C  # registers torch.ops.impulse_attn.*
    _IMPORT_ERROR = ""
except ImportError as _e:  # pragma: no cover - exercised only on installs without the extension
    _C = None
    _IMPORT_ERROR = f"impulse_attn._C is not built ({_e}); run `pip install --no-build-isolation -e .`"


def available(device: str = "cpu") -> Tuple[bool, str]:
    """Whether the compiled fit can run on ``device`` ("cpu" or "cuda"), and why not."""
    if _C is None:
        return False, _IMPORT_ERROR
    if str(device).startswith("cuda"):
        if not _C.has_cuda():
            return False, "impulse_attn._C was built without CUDA sources"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
    return True, ""


if _C is not None:
    @torch.library.register_fake("impulse_attn::fit_iterative")
    def _fit_iterative_fake(a, b, targets, q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k, norm0, step0,
                            steps, lr, scale, renorm_every, renorm_mode, beta1=0.9, beta2=0.999, eps=1e-8,
                            loss_heads=0, plan=-1):
        torch._check(k.shape == q.shape, lambda: "k must have the shape of q")
        torch._check(targets.shape[:2] == q.shape[:2], lambda: "targets must be (layers, heads, N, N) like q")
        outs = [torch.empty_like(t) for t in (q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k)]
        return (*outs, q.new_empty(q.shape[:2]))

    @torch.library.register_fake("impulse_attn::fit_gradients")
    def _fit_gradients_fake(a, b, targets, q, k, scale, loss_heads=0, plan=-1):
        torch._check(k.shape == q.shape, lambda: "k must have the shape of q")
        return torch.empty_like(q), torch.empty_like(k), q.new_empty(q.shape[:2])


def run_steps(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, state: tuple, norm0: torch.Tensor,
              step0: int, steps: int, *, lr: float, scale: float, renorm_every: int, renorm: str,
              loss_heads: int = 0, plan: int = -1) -> tuple:
    """Advance (q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k), all (layers, heads, D, r) on one device,
    by ``steps`` Adam steps from step ``step0``; returns the new state and each head's loss at the last forward.
    Same signature as ``reduced.run_steps`` (its PyTorch twin)."""
    out = torch.ops.impulse_attn.fit_iterative(a, b, targets, *state, norm0, int(step0), int(steps), float(lr),
                                               float(scale), int(renorm_every), RENORM_MODES.index(renorm),
                                               loss_heads=int(loss_heads), plan=int(plan))
    return tuple(out[:6]), out[6]


def _prepared(x, targets, q0, k0, device, dtype, basis_rtol):
    to = dict(device=torch.device(device), dtype=dtype)
    a, b = reduced.factor_basis(x, basis_rtol, dtype)
    return (a.to(**to), b.to(**to), targets.to(**to).contiguous(), q0.to(**to).contiguous(),
            k0.to(**to).contiguous())


def fit_iterative(x: torch.Tensor, targets: torch.Tensor, head_dim: int, *, q0: torch.Tensor, k0: torch.Tensor,
                  device="cpu", steps: int = 10000, lr: float = 1e-4, scale: float = 0.1, renorm_every: int = 100,
                  renorm: str = "code", dtype: torch.dtype = torch.float32, basis_rtol: Optional[float] = None,
                  plan: int = -1, return_loss: bool = False):
    """The published recipe through the compiled kernels: the iterates of ``iterative.fit_iterative_reference``.

    x (N, D), targets (layers, heads, N, N), q0/k0 (layers, heads, D, head_dim) -> Q, K on the CPU in ``dtype``
    (float64 runs on the CPU only); ``return_loss`` adds each head's final loss (layers, heads)."""
    a, b, t, q, k = _prepared(x, targets, q0, k0, device, dtype, basis_rtol)
    norm0 = init_norm(q).reshape(-1).contiguous()
    zeros = [torch.zeros_like(q) for _ in range(4)]
    state, loss = run_steps(a, b, t, (q, k, *zeros), norm0, 0, steps, lr=lr, scale=scale,
                            renorm_every=renorm_every, renorm=renorm, plan=plan)
    out = (state[0].cpu(), state[1].cpu())
    return (*out, loss.cpu()) if return_loss else out


def fit_gradients(x: torch.Tensor, targets: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, *,
                  device="cpu", basis_rtol: Optional[float] = None, plan: int = -1):
    """d loss / d Q, K of the recipe's loss (sum over layers of the mean over heads·N·N of (p − t)²) at Q, K, by
    the fused kernel; returns (dq, dk, per-head loss) on the CPU, in q's dtype."""
    a, b, t, qd, kd = _prepared(x, targets, q, k, device, q.dtype, basis_rtol)
    dq, dk, loss = torch.ops.impulse_attn.fit_gradients(a, b, t, qd, kd, float(scale), 0, plan=int(plan))
    return dq.cpu(), dk.cpu(), loss.cpu()
