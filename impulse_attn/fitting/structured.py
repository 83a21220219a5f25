"""The closed form of "Structured Initialization for Vision Transformers" (2505.19985), as its public code does it.

The public code (a timm fork: ``impulse_init``, ``get_ortho_like`` and ``VisionTransformer.post_init_weights`` in
``timm/models/vision_transformer.py``) differs from ``fitting.closed_form`` in every step that sets the map, so
reproducing it needs its own math, collected here. Model plumbing (which weights, which pseudo-input) lives in
``impulse_attn.timm``.

Per layer, for heads h = 0..H-1 on an H_g×W_g token grid (N tokens) with pseudo-input X = LN(pos) (N, D):

1. offsets: head h takes window position ``OFFSET_ORDER_3x3[h % 9]`` (centre, the 4 edge neighbours, then the 4
   corners; see ``official_offsets``);
2. target logits W_h = 1000·T_h + 3·Z_h·[T_h == 0], T_h the hard shift map, Z_h ~ trunc-normal(0, 0.6) cut at
   ±2 (absolute bounds), drawn from the torch generator after a discarded uniform draw of the same size
   (``official_logits``);
3. X⁺_r = rank-r truncated pseudo-inverse of X (r = head dim) through the normal equations: SVD of XᵀX, keep the
   r largest singular values;
4. A_h = X⁺_r W_h X⁺_rᵀ (D×D, rank ≤ r), rank-r SVD A_h = U S Vᵀ, Q_h = U S^½, K_h = V S^½, each divided by its
   Frobenius norm (so Q_h K_hᵀ = A_h / ||A_h||_*, the nuclear norm) (``official_qk``);
5. the model then multiplies Q_h, K_h by 7 and the position embedding by 18 (see ``impulse_attn.timm``).

Value/projection (and the mimetic baseline's query/key) use ``ortho_like``: A = noise_gain·U(±sqrt(3/D)) +
sign·identity_gain·I (the mimetic paper's α, β) drawn with numpy's legacy generator, split by SVD into L = U S^½
and R = S^½ Vᵀ (L R = A).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from .._validate import grid_pair, odd_kernel_size, positive_int

#: The public code's fixed cycle through the 3×3 window, as flat indices (row-major, 4 = centre): centre, up,
#: right, left, down, then the corners up-left, up-right, down-left, down-right. Head h uses entry h % 9.
OFFSET_ORDER_3x3 = (4, 1, 5, 3, 7, 0, 2, 6, 8)
#: Logit of the target token in W_h (``impulse_init(..., scale=1000.0)``).
TARGET_LOGIT = 1000.0
#: Multiplier of the noise Z off the target (``3.0*(tmp-0.0)*(weight==0)``).
NOISE_SCALE = 3.0
#: Std of Z (``trunc_normal_(tmp, std=0.6)``).
NOISE_STD = 0.6
#: Truncation bounds of Z: ``trunc_normal_``'s defaults a=-2, b=2 are absolute values (about ±3.3 std).
NOISE_BOUNDS = (-2.0, 2.0)
#: ``torch.nn.functional.layer_norm`` default eps, used on the pseudo-input (no affine parameters).
LN_EPS = 1e-5
#: ``norm_p, norm_q, norm_v = 18.0, 7.0, 1.0`` of ``post_init_weights('impulse')``: the position embedding is
#: multiplied by 18 before the fit reads it, Q_h and K_h (unit Frobenius norm) by 7, value and projection by 1.
#: ``post_init_weights('mimetic')`` uses 1 for all three.
POS_SCALE, QK_SCALE, VPROJ_SCALE = 18.0, 7.0, 1.0
#: ``get_ortho_like(D, heads, 0.4, 0.4, -1)``: value·projection = 0.4·Z − 0.4·I (the mimetic paper's α, β; the
#: sign is β's).
VPROJ_NOISE_GAIN, VPROJ_IDENTITY_GAIN, VPROJ_SIGN = 0.4, 0.4, -1
#: ``get_ortho_like(D, -inf, 0.7, 0.7, 1)``: the mimetic baseline's query·key = 0.7·Z + 0.7·I, one draw per head.
MIMETIC_NOISE_GAIN, MIMETIC_IDENTITY_GAIN, MIMETIC_SIGN = 0.7, 0.7, 1


def official_offsets(num_heads: int, kernel_size: int = 3) -> torch.Tensor:
    """(num_heads, 2) (row, col) offsets in the public code's order, cycling when heads outnumber positions.

    For k = 3 this is exactly ``impulse_init``'s ``k = [4,1,5,3,7,0,2,6,8]``, head h → entry h % 9. The public
    code only works for k = 3 (with k = 5 it indexes past its 9-entry list); for other odd k we keep the same
    order on the inner 3×3 window and then add the outer positions ring by ring (Chebyshev distance, then
    city-block distance, then row-major). k = 1 gives the centre for every head.
    """
    positive_int(num_heads, "num_heads")
    odd_kernel_size(kernel_size)
    half = kernel_size // 2
    if kernel_size == 1:
        order = [(0, 0)]
    else:
        inner = [(i // 3 - 1, i % 3 - 1) for i in OFFSET_ORDER_3x3]
        outer = [(m, n) for m in range(-half, half + 1) for n in range(-half, half + 1) if max(abs(m), abs(n)) > 1]
        outer.sort(key=lambda mn: (max(abs(mn[0]), abs(mn[1])), abs(mn[0]) + abs(mn[1])))  # stable: row-major ties
        order = inner + outer
    return torch.tensor([order[h % len(order)] for h in range(num_heads)], dtype=torch.long)


def shift_maps(offsets: torch.Tensor, grid_size, dtype=torch.float32) -> torch.Tensor:
    """Hard shift maps (heads, N, N) built with the public code's loops: query (r, c) → key (r+m, c+n).

    Equal to ``targets.impulse_targets``; kept separate so the official path is a line-by-line transcription.
    """
    h, w = grid_pair(grid_size)
    heads = offsets.shape[0]
    weight = torch.zeros((heads, h * w, h * w), dtype=dtype)
    for i, (m, n) in enumerate(offsets.tolist()):
        tmp = torch.zeros((w, w), dtype=dtype)
        for j in range(0 - min(0, n), w - max(0, n)):
            tmp[j, j + n] = 1
        for j in range(0 - min(0, m), h - max(0, m)):
            weight[i, j * w:(j + 1) * w, (j + m) * w:(j + m + 1) * w] += tmp
    return weight


def official_logits(offsets: torch.Tensor, grid_size, generator: Optional[torch.Generator] = None,
                    target_logit: float = TARGET_LOGIT, noise_scale: float = NOISE_SCALE,
                    noise_std: float = NOISE_STD, dtype=torch.float64) -> torch.Tensor:
    """Target logits W (heads, N, N) of one layer: ``target_logit``·T + ``noise_scale``·Z off the target.

    The random stream is the public code's: ``torch.rand_like(weight)`` (drawn and discarded), then
    ``trunc_normal_(tmp, std=0.6)`` overwriting it, both float32 on the CPU. The fork's file imports timm's
    ``trunc_normal_`` (an erfinv sampler), but the tensors its code writes when run (the golden data of
    tests/test_golden.py) carry the draws of ``torch.nn.init.trunc_normal_`` (normals, out-of-range ones
    redrawn): we reproduce what the code wrote. ``generator=None`` uses (and
    advances) the global torch generator, as the public code does; call once per layer, in layer order.
    The noise is drawn in float32 as published; the sum is formed in ``dtype`` (float32 reproduces the code's
    rounding bit for bit).
    """
    t = shift_maps(offsets, grid_size, torch.float32)
    tmp = torch.empty_like(t).uniform_(0, 1, generator=generator)          # torch.rand_like(weight)
    torch.nn.init.trunc_normal_(tmp, std=noise_std, a=NOISE_BOUNDS[0], b=NOISE_BOUNDS[1], generator=generator)
    if dtype == torch.float32:
        return target_logit * t + noise_scale * (tmp - 0.0) * (t == 0)
    t, tmp = t.to(dtype), tmp.to(dtype)
    return target_logit * t + noise_scale * tmp * (t == 0)


def layer_norm_rows(x: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """Each row normalized to zero mean, unit (biased) variance: ``F.layer_norm(x, [D])`` without affine."""
    return torch.nn.functional.layer_norm(x, [x.shape[-1]], eps=eps)


def pinv_rank(x: torch.Tensor, rank: int) -> Tuple[int, float]:
    """(numerical rank of x, σ_rank/σ_1): how well the rank-``rank`` pseudo-inverse of x is conditioned."""
    s = torch.linalg.svdvals(x.to(torch.float64))
    tol = s[0] * max(x.shape) * torch.finfo(torch.float64).eps
    ratio = float(s[rank - 1] / s[0]) if rank <= s.numel() and s[0] > 0 else 0.0
    return int((s > tol).sum()), ratio


def check_official_rank(pseudo_input: torch.Tensor, rank: int, dtype=torch.float32) -> None:
    """Refuse (ValueError) a pseudo-input whose rank-``rank`` truncated pseudo-inverse would invert (near-)zero
    singular values: the public code's result is then inf/NaN or noise. ``dtype``: the arithmetic the inverse will
    use (its precision sets what "near zero" is)."""
    got, ratio = pinv_rank(pseudo_input, rank)
    floor = 10 * math.sqrt(torch.finfo(dtype).eps)
    if got < rank or ratio < floor:
        n, d = pseudo_input.shape[-2:]
        raise ValueError(
            f"the official fit truncates the pseudo-inverse of the {n}x{d} pseudo-input at rank head_dim = {rank}, "
            f"but it has rank {got} (σ_{rank}/σ_1 = {ratio:.2e}, needs > {floor:.1e}): the code would invert "
            f"(near-)zero singular values. This happens when the grid has fewer than head_dim + 1 tokens ({n} "
            f"here); use init 'impulse'")


def official_qk(pseudo_input: torch.Tensor, logits: torch.Tensor, rank: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The public code's closed form in float64: X (N, D) (already layer-normed), W (..., N, N) → Q, K (..., D, r).

    Q_h K_hᵀ = A_h / ||A_h||_* with A_h = X⁺_r W_h X⁺_rᵀ, and ||Q_h||_F = ||K_h||_F = 1, as in ``impulse_init``.
    X⁺_r = V_r S_r⁻¹ U_rᵀ from the thin SVD X = U S Vᵀ equals the code's (XᵀX)⁺_r Xᵀ, and A_h = V_r C_h V_rᵀ with
    C_h = S_r⁻¹ U_rᵀ W_h U_r S_r⁻¹ (r×r), so the rank-r SVD of A_h is V_r times the SVD of C_h: the same factors
    as the code's D×D SVD (up to the sign of each singular pair), at r×r cost. The caller checks σ_r > 0.
    """
    x = pseudo_input.to(torch.float64)
    w = logits.to(torch.float64)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    ur, sr, vr = u[:, :rank], s[:rank], vh[:rank].T
    core = (ur.T @ w @ ur) / sr[:, None] / sr[None, :]
    uc, sc, vch = torch.linalg.svd(core)
    root = sc.sqrt()[..., None, :]
    q = vr @ (uc * root)
    k = vr @ (vch.transpose(-1, -2) * root)
    q = q / q.norm(dim=(-2, -1), keepdim=True)
    k = k / k.norm(dim=(-2, -1), keepdim=True)
    return q, k


def official_qk_float32(pseudo_input: torch.Tensor, logits: torch.Tensor, rank: int
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``impulse_init``'s linear algebra transcribed op for op in float32 (one layer: logits (heads, N, N)).

    ``pseudo_input`` is the raw (N, D) grid position embedding; it is layer-normed here as in the code. Returns
    Q (heads, D, r) and Kᵀ (heads, r, D) exactly as the code's ``u_lr`` and ``vt_lr``: where torch's kernels
    (ATen's noise draw and LayerNorm, MKL's products and SVD) compute as on the code's machine, the weights are
    bit-identical to the public code's (docs/timm.md, "What bit for bit means").
    """
    pe = torch.nn.functional.layer_norm(pseudo_input, [pseudo_input.shape[-1]])
    ptp = torch.matmul(pe.transpose(-1, -2), pe)
    u, s, v = torch.svd(ptp)
    s_inv = torch.zeros_like(s)
    s_inv[:rank] = 1 / s[:rank]
    ptp_inv = torch.matmul(torch.matmul(v, torch.diag_embed(s_inv)), u.transpose(-1, -2))
    pe_inv = torch.matmul(ptp_inv, pe.transpose(-1, -2))
    a = torch.matmul(torch.matmul(pe_inv, logits), pe_inv.transpose(-1, -2))
    u, s, v = torch.svd(a)
    s = torch.diag_embed(s[:, :rank].sqrt())
    u_lr = (u[:, :, :rank] @ s)
    vt_lr = (v[:, :, :rank] @ s).transpose(-1, -2)
    u_lr = u_lr / u_lr.norm('fro', dim=(-1, -2), keepdim=True)
    vt_lr = vt_lr / vt_lr.norm('fro', dim=(-1, -2), keepdim=True)
    return u_lr, vt_lr


def numpy_uniform(seed: Optional[int]) -> Callable:
    """``np.random.uniform`` (the global legacy generator, what the public code calls) for ``seed=None``, else
    the ``uniform`` of a fresh ``np.random.RandomState(seed)`` (the same legacy stream, privately seeded)."""
    if seed is None:
        return np.random.uniform
    # RandomState takes 32-bit seeds; a larger one (up to 2**63 - 1) is given as two 32-bit words
    return np.random.RandomState(seed if seed < 2 ** 32 else [seed % 2 ** 32, seed // 2 ** 32]).uniform


def ortho_like(dim: int, noise_gain: float, identity_gain: float, sign: int, uniform: Callable
               ) -> Tuple[np.ndarray, np.ndarray]:
    """The public code's ``get_ortho_like(dim, _, alpha, beta, sign, dist='uniform')`` in float64 numpy, with
    ``noise_gain``, ``identity_gain`` its (and the mimetic paper's) α, β.

    A = noise_gain·U(±sqrt(3)/sqrt(dim)) + sign·identity_gain·I (the uniform noise has variance 1/dim), SVD
    A = U S Vᵀ; returns L = U S^½ and R = S^½ Vᵀ with L R = A. ``uniform`` is ``numpy_uniform(seed)``.
    """
    bound = 3 ** 0.5 / (dim ** 0.5)
    a = noise_gain * uniform(size=(dim, dim), low=-bound, high=bound) + sign * identity_gain * np.eye(dim)
    u, s, vh = np.linalg.svd(a)
    return u @ np.diag(np.sqrt(s)), np.diag(np.sqrt(s)) @ vh
