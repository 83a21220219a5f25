"""official: the structured-init paper's own closed form (arXiv 2505.19985, its public code), as a strategy.

On a standard ViT (timm, Hugging Face, torchvision) its ``vit`` handler is the paper's code, op for op: the position
embedding × 18, per block target logits 1000·T + 3·Z (Z from the torch stream), the float32 rank-r pseudo-inverse
and SVD of ``impulse_init``, Q_h and K_h of Frobenius norm 7, value/projection from ``get_ortho_like`` (the numpy
stream), query/key biases kept. Where the platform's kernels compute as the paper's machine did, the written
tensors are bit-identical to the code's (docs/timm.md, "What bit for bit means"). On any other query/key layer the
``qk`` handler applies the same formula to the layer's own pseudo-input in float64.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ...fitting.structured import (LN_EPS, NOISE_BOUNDS, NOISE_SCALE, NOISE_STD, OFFSET_ORDER_3x3, POS_SCALE,
                                   QK_SCALE, TARGET_LOGIT, VPROJ_SCALE, check_official_rank, numpy_uniform,
                                   official_logits, official_offsets, official_qk, official_qk_float32)
from ..._validate import as_bool
from ..protocol import ViTPlan
from ..registry import Strategy, register_strategy
from ._common import check_vit_geometry, positive_scale, vit_settings, write_paper_vproj

#: The settings the paper's code takes as its mode string ``impulse{p}_{q}_{v}`` and this package's switches.
VIT_SETTINGS = {"pos_scale": None, "qk_scale": None, "vproj_scale": None, "vproj": True, "qk_bias": "keep",
                "compute_dtype": None}


def official_vit(layers, generator: Optional[torch.Generator], *, seed: Optional[int], fit_method, kernel_size: int,
                 fit_kwargs: dict, options: dict) -> ViTPlan:
    """The paper's ``post_init_weights('impulse')``: blocks in order, query/key before value/projection."""
    r = layers.request
    s = vit_settings({**fit_kwargs, **options}, VIT_SETTINGS, "official")
    dtype = torch.float32 if s["compute_dtype"] is None else s["compute_dtype"]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be None, torch.float32 or torch.float64, got {s['compute_dtype']!r}")
    check_vit_geometry(r, kernel_size, "official")
    p_scale = positive_scale(s["pos_scale"], "pos_scale") or POS_SCALE
    q_scale = positive_scale(s["qk_scale"], "qk_scale") or QK_SCALE
    v_scale = positive_scale(s["vproj_scale"], "vproj_scale") or VPROJ_SCALE
    start = time.perf_counter()
    pos = layers.position_rows(p_scale).float()       # the code's float32, whatever the model's dtype
    x = layers.pseudo_input(p_scale)
    check_official_rank(x, r.head_dim, dtype)
    offsets = official_offsets(r.num_heads, kernel_size)
    uniform = numpy_uniform(seed)
    logits = []
    for i in range(r.depth):      # one block at a time, in order: the noise stream is the public code's
        w = official_logits(offsets, r.grid, generator=generator, dtype=dtype)
        if dtype == torch.float32:
            u_lr, vt_lr = official_qk_float32(pos, w, r.head_dim)
            _write_rows(layers, i, q_scale * u_lr.transpose(-1, -2), q_scale * vt_lr)
        else:
            logits.append(w)
        if as_bool(s["vproj"], "vproj"):
            write_paper_vproj(layers, i, uniform, v_scale, mimetic_orientation=False)
    if dtype == torch.float64:    # the same formulas without float32 round-off, all blocks in one batch
        q, k = official_qk(x, torch.stack(logits), r.head_dim)
        for i in range(r.depth):
            _write_rows(layers, i, (q_scale * q[i].transpose(-1, -2)).float(),
                        (q_scale * k[i].transpose(-1, -2)).float())
    constants = dict(pos_scale=p_scale, qk_scale=q_scale, vproj_scale=v_scale, vproj=bool(s["vproj"]),
                     ln_eps=LN_EPS, offset_order_3x3=list(OFFSET_ORDER_3x3), target_logit=TARGET_LOGIT,
                     noise_scale=NOISE_SCALE, noise_std=NOISE_STD, noise_bounds=list(NOISE_BOUNDS),
                     pinv_rank=r.head_dim, svd_rank=r.head_dim, compute_dtype=str(dtype).replace("torch.", ""))
    return ViTPlan(offsets=offsets[None].expand(r.depth, -1, -1).clone(), position_scale=p_scale,
                   qk_bias=s["qk_bias"], constants=constants,
                   result=dict(fit_method="official", fit_seconds=time.perf_counter() - start, fit_report=None,
                            backend=f"structured/{str(dtype).replace('torch.', '')}", fit_scale=None))


def _write_rows(layers, block: int, q: torch.Tensor, k: torch.Tensor) -> None:
    """Per-head (heads, r, D) query and key rows, stacked head by head as the code's ``rows[h·r:(h+1)·r]``."""
    heads, hd, dim = q.shape
    layers.write_qk(block, q.reshape(heads * hd, dim), k.reshape(heads * hd, dim))


def official_qk_layers(layers, requests, generator, *, seed: int, kernel_size: int, **_):
    for layer, r in zip(layers, requests):
        if r.pseudo_input is None:
            raise ValueError("the official fit needs the layer's pseudo-input (the positional part of its queries "
                             "and keys); this layer reports none")
        check_official_rank(r.pseudo_input.to(torch.float64), r.head_dim, torch.float64)
        offsets = official_offsets(r.num_heads, kernel_size)
        logits = official_logits(offsets, r.grid_size, generator=generator)
        q, k = official_qk(r.pseudo_input, logits, r.head_dim)
        layer.load_qk((QK_SCALE * q).float(), (QK_SCALE * k).float(), offsets)
    return None


STRATEGY = register_strategy(Strategy(
    "official", "the structured-init paper's own closed form (bit for bit on timm/Hugging Face ViTs)",
    vit=official_vit, qk=official_qk_layers, needs_pseudo_input=True,
    settings={"vit": ("kernel_size",) + tuple(VIT_SETTINGS), "qk": ("kernel_size",)}))
