"""mimetic: Trockman & Kolter's mimetic query/key init (docs/METHOD.md, "Baselines").

On query/key layers (Simple ViT, Swin's window attention, any other): Q Kᵀ per head is the best rank-r part of
0.7·sqrt(1/D)·U(−1, 1) + 0.7·I, drawn from the strategy's torch generator. On a standard ViT as a whole (timm,
Hugging Face, torchvision) it is the structured-init paper's own mimetic baseline: per block, per head
``get_ortho_like(D, -inf, 0.7, 0.7, 1)`` (numpy's stream, uniform noise of variance 1/D), then the block's
value/projection from 0.4·Z − 0.4·I, the position embedding untouched. ``fit_method="official"`` stores
value/projection in the code's mimetic orientation (bit for bit with it); otherwise in its impulse branch's, where
value-then-projection is x ↦ x·(0.4·Z − 0.4·I) (docs/timm.md).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch

from ...fitting.structured import (MIMETIC_IDENTITY_GAIN, MIMETIC_NOISE_GAIN, MIMETIC_SIGN, VPROJ_SCALE,
                                   numpy_uniform, ortho_like)
from ..._validate import as_bool
from ..protocol import ViTPlan
from ..registry import Strategy, register_strategy
from ._common import independent, positive_scale, vit_settings, write_paper_vproj

VIT_SETTINGS = {"pos_scale": None, "qk_scale": None, "vproj_scale": None, "vproj": True, "qk_bias": "keep"}


def mimetic_qk(heads: int, dim_in: int, head_dim: int, generator: torch.Generator,
               noise_gain: float = 0.7, identity_gain: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Trockman & Kolter's mimetic init: W = noise_gain·sqrt(1/D)·U(−1, 1) + identity_gain·I per head, Q Kᵀ = its
    best rank-r part. ``noise_gain``, ``identity_gain`` are the mimetic paper's α, β."""
    noise = 2 * torch.rand(heads, dim_in, dim_in, generator=generator, dtype=torch.float64) - 1
    w = noise_gain * math.sqrt(1.0 / dim_in) * noise + identity_gain * torch.eye(dim_in, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w)
    root = s[:, :head_dim].sqrt()
    q = u[:, :, :head_dim] * root[:, None, :]
    k = vh[:, :head_dim, :].transpose(1, 2) * root[:, None, :]
    if head_dim > dim_in:
        pad = torch.zeros(heads, dim_in, head_dim - dim_in, dtype=torch.float64)
        q, k = torch.cat((q, pad), -1), torch.cat((k, pad), -1)
    return q.float(), k.float()


def mimetic_vit(layers, generator: Optional[torch.Generator], *, seed: Optional[int], fit_method: str,
                kernel_size: int, fit_kwargs: dict, options: dict) -> ViTPlan:
    """The paper's ``post_init_weights('mimetic')``: blocks in order, per block every head's query/key from
    ``get_ortho_like`` and then the block's value/projection, all from one numpy stream."""
    r = layers.request
    s = vit_settings({**fit_kwargs, **options}, VIT_SETTINGS, "mimetic")
    q_scale = positive_scale(s["qk_scale"], "qk_scale") or 1.0
    v_scale = positive_scale(s["vproj_scale"], "vproj_scale") or VPROJ_SCALE
    p_scale = positive_scale(s["pos_scale"], "pos_scale") or 1.0
    start = time.perf_counter()
    uniform = numpy_uniform(seed)
    dim, hd = r.dim, r.head_dim
    for i in range(r.depth):
        q_rows = torch.empty(dim, dim, dtype=torch.float32)
        k_rows = torch.empty(dim, dim, dtype=torch.float32)
        for h in range(r.num_heads):
            left, right = ortho_like(dim, MIMETIC_NOISE_GAIN, MIMETIC_IDENTITY_GAIN, MIMETIC_SIGN, uniform)
            q_rows[h * hd:(h + 1) * hd] = q_scale * torch.tensor(left[:, :hd].T).float()
            k_rows[h * hd:(h + 1) * hd] = q_scale * torch.tensor(right.T[:, :hd].T).float()
        layers.write_qk(i, q_rows, k_rows)
        if as_bool(s["vproj"], "vproj"):
            write_paper_vproj(layers, i, uniform, v_scale, mimetic_orientation=fit_method == "official")
    constants = dict(pos_scale=p_scale, qk_scale=q_scale, vproj_scale=v_scale, vproj=bool(s["vproj"]),
                     mimetic_noise_gain=MIMETIC_NOISE_GAIN, mimetic_identity_gain=MIMETIC_IDENTITY_GAIN,
                     vproj_orientation="official" if fit_method == "official" else "x (W_v^T W_proj^T) = x A")
    return ViTPlan(position_scale=p_scale if r.has_position else None, qk_bias=s["qk_bias"], constants=constants,
                   result=dict(fit_method=fit_method, fit_seconds=time.perf_counter() - start, fit_report=None,
                            backend="numpy", fit_scale=None))


STRATEGY = register_strategy(Strategy(
    "mimetic", "Q Kᵀ ≈ 0.7·Z + 0.7·I per head (Trockman & Kolter); query/key layers only",
    vit=mimetic_vit, qk=independent(mimetic_qk, lambda d, r: 32 * d * d),   # a D×D float64 matrix and SVD per head
    fit_methods=("closed_form", "official"), settings={"vit": ("fit_method",) + tuple(VIT_SETTINGS)}))
