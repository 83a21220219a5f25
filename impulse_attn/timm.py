"""The structured (impulse) and mimetic init of an unmodified timm ``VisionTransformer``: the timm face of
``impulse_attn.families`` (kept for code written against it; ``impulse_attn.init_`` reaches every family)::

    import timm
    import impulse_attn.timm as iat

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4)
    report = iat.init_(model, init="impulse")            # in place; returns per-block fit quality
    maps = iat.attention_maps(model, images)             # per block (B, heads, N, N), grid tokens only

What ``init_`` changes, its fits (``"closed_form"``, ``"official"`` bit for bit with the authors' code,
``"iterative"``), constants and random streams: ``impulse_attn.families.standard_vit`` and docs/timm.md.
"""
from __future__ import annotations

from typing import List, Optional

import torch

try:
    import timm  # noqa: F401  (the third-party package; this module is impulse_attn.timm)
except ImportError as e:  # pragma: no cover - timm is a dependency of the setup
    raise ImportError("impulse_attn.timm needs timm (pip install timm>=1.0)") from e

from .families import standard_vit as _engine
from .families import timm_vit as _timm_vit
from .families.standard_vit import (FIT_METHODS, IMPULSE_SCALES, INITS, MIMETIC_IDENTITY_GAIN, MIMETIC_NOISE_GAIN,
                                    MIMETIC_SCALES, VPROJ_IDENTITY_GAIN, VPROJ_NOISE_GAIN, TimmInitReport,
                                    official_offsets)

__all__ = ["init_", "attention_maps", "pseudo_input", "official_offsets", "TimmInitReport", "INITS", "FIT_METHODS",
           "IMPULSE_SCALES", "MIMETIC_SCALES", "VPROJ_NOISE_GAIN", "VPROJ_IDENTITY_GAIN", "MIMETIC_NOISE_GAIN",
           "MIMETIC_IDENTITY_GAIN"]


def init_(model, init: str = "impulse", **kwargs) -> TimmInitReport:
    """Re-initialize a created timm ``VisionTransformer`` in place (``init`` "impulse" or "mimetic"); every
    keyword of ``families.standard_vit.structured_init_`` (``fit_method``, ``kernel_size``, ``seed``, scales, ``vproj``,
    ``qk_bias``, ``compute_dtype``, fit_impulse keywords). Other models and settings are refused before anything
    changes."""
    from ._validate import choice
    choice(init, "init", INITS)
    return _engine.structured_init_(_timm_vit.view(model, need_pos=init == "impulse"), init, **kwargs)


def attention_maps(model, images: Optional[torch.Tensor] = None, *, dtype=None) -> List[torch.Tensor]:
    """Per block, the attention maps (B, heads, N, N) over the grid tokens (``images=None``: on the pseudo-input
    LN(grid pos_embed)); see ``families.standard_vit.attention_maps``."""
    return _engine.attention_maps(_timm_vit.view(model, need_pos=images is None), images, dtype=dtype)


def pseudo_input(model, pos: Optional[torch.Tensor] = None, dtype=torch.float64) -> torch.Tensor:
    """X = LN(position embedding of the grid tokens), (N, D)."""
    return _engine.pseudo_input(_timm_vit.view(model, need_pos=True), pos=pos, dtype=dtype)
