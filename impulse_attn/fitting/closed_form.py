"""Closed-form impulse fit (after the 2505.19985 code): no iterations, a least-squares projection and an SVD.

For head h the target logits are L_h = β · (row-shift match + column-shift match), which exp turns into the
product of a row impulse and a column impulse (``targets.separable_logit_target``). With the pseudo-input
X = U Σ Vᵀ (N, D), the least-squares D×D bilinear form is A_h = X⁺ L_h X⁺ᵀ, and Q_h Kᵀ_h = A_h / s is split by a
rank-r SVD into Q_h = U_r S_r^½ and K_h = V_r S_r^½ (each divided by sqrt(s)).

Why the pseudo-inverse is truncated: the sin-cos encoding has a few tiny singular values (numerical rank about
15-25 whatever D is). An untruncated X⁺ multiplies the target by 1/σ² along those directions: the map on X looks
perfect but ||A|| reaches 1e3-1e4, and in Model I the content term α·LN(x), which is not small along those
directions, then produces logits of 1e3 and more (training diverges). Keeping singular values above
``pinv_rtol`` · σ_max bounds ||A|| to a few units at every D we tried while the argmax still hits every valid row.

β is found by bisection so that the mean attention mass on the target over valid rows equals ``target_mass``
(default 0.3, as soft as the iterative recipe's maps), unless ``logit_scale`` fixes β directly.

Size limit: an SVD of an m×n matrix costs about m·n·min(m, n) operations, and the closed form takes one of the
pseudo-input (N×D) and one of the kept k×k core per head (k: the singular values of X kept, at most min(N, D); the
sin-cos encoding keeps 15-25, the identity of mode "III" keeps all N). Either total above
``MAX_CLOSED_FORM_WORK`` (2**35, about a minute of CPU time) is refused with a ValueError before that SVD starts:
mode "III" on grids above about 45×45 tokens, or many heads on grids above about 32×32.
"""
from __future__ import annotations

from typing import Optional

import torch

#: The most SVD work (the sum of m·n·min(m, n) over the SVDs taken) a closed-form fit may do: about a minute of CPU.
MAX_CLOSED_FORM_WORK = 2 ** 35

_ADVICE = ("use fit_method='iterative' (its cost grows like N²·D per step, not N³), fewer heads or layers per call, "
           "or a smaller grid (mode 'III' fits an N×N identity pseudo-input: N = H·W tokens)")


def check_closed_form_work(n: int, d: int, matrices: int = 0, k: int = 0) -> None:
    """Refuse a closed form whose SVD of the N×D pseudo-input, or whose ``matrices`` SVDs of the kept k×k core,
    exceed ``MAX_CLOSED_FORM_WORK``."""
    if n * d * min(n, d) > MAX_CLOSED_FORM_WORK:
        raise ValueError(f"the closed form takes an SVD of the {n} x {d} pseudo-input (about {n * d * min(n, d):.2g} "
                         f"operations), over its limit of MAX_CLOSED_FORM_WORK = {MAX_CLOSED_FORM_WORK:.2g} (about a "
                         f"minute of CPU time): {_ADVICE}")
    if matrices * k ** 3 > MAX_CLOSED_FORM_WORK:
        raise ValueError(f"the closed form takes {matrices} SVDs of {k} x {k} matrices (one per head; {k} = the rank "
                         f"kept of the pseudo-input), about {matrices * k ** 3:.2g} operations, over its limit of "
                         f"MAX_CLOSED_FORM_WORK = {MAX_CLOSED_FORM_WORK:.2g} (about a minute of CPU time): {_ADVICE}")


def _projector(x: torch.Tensor, rtol: float):
    u, s, vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
    keep = s > rtol * s[0]
    return u[:, keep], s[keep], vh[keep].T


def _maps_mass(logits: torch.Tensor, beta: float, target_idx: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean softmax mass on the target over valid rows at logit scale β (float32 is plenty for calibration)."""
    maps = torch.softmax(beta * logits, dim=-1)
    mass = maps.gather(-1, target_idx[..., None])[..., 0]
    return float((mass * valid).sum() / valid.sum().clamp_min(1))


def fit_closed_form(x: torch.Tensor, logit_targets: torch.Tensor, hard_targets: torch.Tensor,
                    valid: torch.Tensor, rank: int, *, scale: float = 0.1, target_mass: float = 0.3,
                    logit_scale: Optional[float] = None, pinv_rtol: float = 0.03, max_logit_scale: float = 64.0,
                    noise_std: float = 0.0, generator: Optional[torch.Generator] = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """x (N, D), logit_targets/hard_targets (..., N, N), valid (..., N) -> Q, K (..., D, r) float32 and β.

    ``noise_std`` adds truncated-normal noise off the target to L (the 2505.19985 code's b·Z term), which
    breaks ties between heads that share an offset.
    """
    check_closed_form_work(*x.shape)
    uk, sk, vk = _projector(x, pinv_rtol)
    check_closed_form_work(1, 1, logit_targets[..., 0, 0].numel(), sk.numel())
    lt = logit_targets.to(torch.float64)
    # Row-constant shifts do not change a softmax; removing the row mean keeps A small.
    lt = lt - lt.mean(dim=-1, keepdim=True)
    if noise_std > 0:
        z = torch.empty_like(lt)
        torch.nn.init.trunc_normal_(z, std=noise_std, a=-2 * noise_std, b=2 * noise_std, generator=generator)
        lt = lt + z * (hard_targets.to(torch.float64) == 0)
    core = uk.T @ lt @ uk                                        # (..., k, k): L projected on span(X)
    # A = V_k (core / σσᵀ) V_kᵀ; its rank-r SVD is taken before β is calibrated, so the mass is measured on the
    # map the rank-r Q, K actually produce.
    u, s, vh = torch.linalg.svd(core / sk[:, None] / sk[None, :])
    r = min(rank, s.shape[-1])
    u, s, vh = u[..., :r], s[..., :r], vh[..., :r, :]
    achieved = (sk[:, None] * u * s[..., None, :]) @ (vh * sk[None, :])   # X-basis logits at β = 1
    target_idx = hard_targets.argmax(-1)
    if logit_scale is None:
        logits = (uk @ achieved @ uk.T).float()           # β = 1; the mass grows monotonically with β
        lo, hi = 0.0, 1.0
        while _maps_mass(logits, hi, target_idx, valid) < target_mass and hi < max_logit_scale:
            lo, hi = hi, min(hi * 2, max_logit_scale)
        for _ in range(40):                               # to 1e-4 of the target mass (or β to 1e-6 relative)
            mid = 0.5 * (lo + hi)
            mass = _maps_mass(logits, mid, target_idx, valid)
            if abs(mass - target_mass) < 1e-4 * target_mass or hi - lo < 1e-6 * hi:
                lo = hi = mid
                break
            if mass < target_mass:
                lo = mid
            else:
                hi = mid
        beta = 0.5 * (lo + hi)
    else:
        beta = float(logit_scale)
    root = (beta * s / scale).sqrt()
    q = vk @ (u * root[..., None, :])
    k = vk @ (vh.transpose(-1, -2) * root[..., None, :])
    if r < rank:  # rank above the kept dimension of X: the extra columns carry nothing
        pad = torch.zeros(*q.shape[:-1], rank - r, dtype=q.dtype)
        q, k = torch.cat((q, pad), -1), torch.cat((k, pad), -1)
    return q.float(), k.float(), beta
