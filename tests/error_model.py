"""Rounding-error bounds for attention, from the inputs alone: what a correct kernel at a given precision may be
off by, against float64 truth, whatever order its sums take (so no tolerance depends on which BLAS or vector code
path a machine happens to get).

Standard floating-point error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3), first
order in the unit roundoff u = eps/2 (we use eps, a factor 2 of slack):

- a dot product of length m computed in any order: |fl(x·y) − x·y| ≤ γ_m Σ|x_i y_i|, γ_m = m·eps;
- logits s_ij = scale·q_i·k_j:        δs_ij ≤ γ_d · |scale| · Σ_c |q_ic k_jc|              (=: S_ij)
- softmax p_i = exp(s_i − m_i)/Σ exp: δp_ij ≤ p_ij (2 max_j S_ij + (N + 4)·eps)        (exp, sum, division)
- output o_i = Σ_j p_ij v_j:          δo_i ≤ Σ_j δp_ij |v_j| + γ_N Σ_j p_ij |v_j|
- backward (dO = g): dv_j = Σ_i p_ij g_i; dP_ij = g_i·v_j; D_i = g_i·o_i; dS = p ∘ (dP − D);
  dq_i = scale Σ_j dS_ij k_j, dk_j = scale Σ_i dS_ij q_i, each bounded by propagating the terms above.

Inputs of a lower precision are rounded before the kernel sees them; the truth is computed in float64 from the
rounded inputs, so only the kernel's own arithmetic (accumulating in float32) and the final rounding of each output
to its dtype are bounded. Kernels at float16/bfloat16 also round the matmul operands they form themselves (P before
P·V, dS before dS·K, the saved O) to the input dtype, as flash attention does: that adds eps(dtype) relative to
each of those. ``SLACK`` covers the dropped second-order terms.
"""
from __future__ import annotations

import torch

SLACK = 4.0
ACC_EPS = {torch.float64: torch.finfo(torch.float64).eps}
FP32_EPS = torch.finfo(torch.float32).eps


def _acc_eps(dtype: torch.dtype) -> float:
    """Unit of the accumulation: float64 kernels accumulate in float64, every other dtype in float32."""
    return ACC_EPS.get(dtype, FP32_EPS)


def attention_bounds(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, grad_out: torch.Tensor,
                     dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Element-wise bounds for (out, dq, dk, dv) of softmax(scale·q kᵀ) v computed at ``dtype``.

    q, k, v, grad_out: the (already rounded) inputs in float64, shape (B, H, N, d). Returns four float64 tensors
    of the shapes of out, q, k, v."""
    q, k, v, g = (t.double() for t in (q, k, v, grad_out))
    n, d = q.shape[-2], q.shape[-1]
    eps = _acc_eps(dtype)
    out_eps = torch.finfo(dtype).eps if dtype != torch.float64 else eps
    op_eps = out_eps if dtype in (torch.float16, torch.bfloat16) else 0.0   # operands rounded to the input dtype
    a = abs(scale)
    s = (q @ k.transpose(-1, -2)) * scale
    p = torch.softmax(s, dim=-1)
    S = d * eps * a * (q.abs() @ k.abs().transpose(-1, -2))                 # δs bound, (B, H, N, N)
    dp_ = p * (2 * S.amax(-1, keepdim=True) + (n + 4) * eps + op_eps)        # δp bound
    o = p @ v
    out_b = dp_ @ v.abs() + n * eps * (p @ v.abs())
    # backward
    dv_b = dp_.transpose(-1, -2) @ g.abs() + n * eps * (p.transpose(-1, -2) @ g.abs())
    dP = g @ v.transpose(-1, -2)
    dP_b = d * eps * (g.abs() @ v.abs().transpose(-1, -2))
    D = (g * o).sum(-1, keepdim=True)
    D_b = (d * eps + out_eps) * (g.abs() * o.abs()).sum(-1, keepdim=True) + (g.abs() * out_b).sum(-1, keepdim=True)
    dS = p * (dP - D)
    dS_b = dp_ * (dP - D).abs() + p * (dP_b + D_b) + (2 * eps + op_eps) * dS.abs()
    dq_b = a * (dS_b @ k.abs() + n * eps * (dS.abs() @ k.abs()))
    dk_b = a * (dS_b.transpose(-1, -2) @ q.abs() + n * eps * (dS.abs().transpose(-1, -2) @ q.abs()))
    truth = (o, dS @ k * scale, dS.transpose(-1, -2) @ q * scale, p.transpose(-1, -2) @ g)
    bounds = (out_b, dq_b, dk_b, dv_b)
    # the result is rounded once more to its own dtype
    return tuple(SLACK * b + out_eps * t.abs() for b, t in zip(bounds, truth))


def assert_within(name: str, got: torch.Tensor, truth: torch.Tensor, bound: torch.Tensor) -> None:
    """Every element within its bound; the message shows the worst element and how much of its bound it used."""
    err = (got.detach().double() - truth.detach()).abs()
    bound = bound.detach()
    ratio = err / bound.clamp_min(1e-300)
    worst = int(ratio.argmax())
    assert bool((err <= bound).all()), (f"{name}: error {err.flatten()[worst]:.3e} exceeds its bound "
                                        f"{bound.flatten()[worst]:.3e} at flat index {worst} "
                                        f"({float(ratio.max()):.2f}× the bound)")
