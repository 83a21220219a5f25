"""The structured (impulse) and mimetic init of an unmodified timm ``VisionTransformer``: the timm face of
``impulse_attn.families`` (kept for code written against it; ``impulse_attn.init_`` reaches every family)::

    import timm
    import impulse_attn.timm as iat

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4)
    report = iat.init_(model, init="impulse")            # in place; returns per-block fit quality
    maps = iat.attention_maps(model, images)             # per block (B, heads, N, N), grid tokens only

What ``init_`` changes, its fits (``"closed_form"``, ``"official"`` bit for bit with the authors' code where the
platform computes as theirs, ``"iterative"``), constants and random streams: ``impulse_attn.families.standard_vit``,
the strategies in ``impulse_attn.init.strategies`` and docs/timm.md.
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
from .families.standard_vit import TimmInitReport, official_offsets
from .fitting.structured import (MIMETIC_IDENTITY_GAIN, MIMETIC_NOISE_GAIN, POS_SCALE, QK_SCALE, VPROJ_IDENTITY_GAIN,
                                 VPROJ_NOISE_GAIN, VPROJ_SCALE)
from .init.registry import get_strategy

__all__ = ["init_", "attention_maps", "pseudo_input", "official_offsets", "TimmInitReport", "INITS", "FIT_METHODS",
           "IMPULSE_SCALES", "MIMETIC_SCALES", "VPROJ_NOISE_GAIN", "VPROJ_IDENTITY_GAIN", "MIMETIC_NOISE_GAIN",
           "MIMETIC_IDENTITY_GAIN"]

INITS = ("impulse", "mimetic")
#: This face's ``fit_method`` values for ``init="impulse"``: the impulse strategy's fits and "official", the paper's
#: own closed form (this face's one alias: it runs the "official" strategy, as ``impulse_attn.init_(model,
#: "official")`` does). For ``init="mimetic"``, "official" is the mimetic strategy's paper orientation.
FIT_METHODS = get_strategy("impulse").fit_methods + ("official",)
#: (pos_scale, qk_scale, vproj_scale) of ``post_init_weights('impulse')`` and ``('mimetic')``.
IMPULSE_SCALES = (POS_SCALE, QK_SCALE, VPROJ_SCALE)
MIMETIC_SCALES = (1.0, 1.0, 1.0)


def init_(model, init: str = "impulse", *, fit_method: Optional[str] = None, kernel_size: int = 3,
          seed: Optional[int] = 0, images: Optional[torch.Tensor] = None, **settings) -> TimmInitReport:
    """Re-initialize a created timm ``VisionTransformer`` in place (``init`` "impulse" or "mimetic").

    ``fit_method``: "closed_form" (default), "iterative" or "official" (the paper's code); ``seed=None``: the global
    torch and numpy generators, as the paper's code (official and mimetic only); ``images``: training images the
    calibration of the position scale reads. ``settings``: the strategy's own (``pos_scale``, ``qk_scale``,
    ``vproj_scale``, ``vproj``, ``qk_bias``, ``compute_dtype`` (official), ``position_share``, ``fit_input``) and,
    for the closed_form / iterative fits, ``fit_impulse``'s keywords. Other models and settings are refused before
    anything changes."""
    from ._validate import choice
    choice(init, "init", INITS)
    if fit_method is not None:
        choice(fit_method, "fit_method", FIT_METHODS)
    official = init == "impulse" and fit_method == "official"
    strategy = get_strategy("official" if official else init)
    view = _timm_vit.view(model, need_pos=False)
    return _engine.run_vit_strategy(view, strategy, seed=seed, fit_method=None if official else fit_method,
                                    kernel_size=kernel_size, fit_kwargs=settings, images=images)


def attention_maps(model, images: Optional[torch.Tensor] = None, *, dtype=None) -> List[torch.Tensor]:
    """Per block, the attention maps (B, heads, N, N) over the grid tokens (``images=None``: on the pseudo-input
    LN(grid pos_embed)); see ``families.standard_vit.attention_maps``."""
    return _engine.attention_maps(_timm_vit.view(model, need_pos=images is None), images, dtype=dtype)


def pseudo_input(model, pos: Optional[torch.Tensor] = None, dtype=torch.float64) -> torch.Tensor:
    """X = LN(position embedding of the grid tokens), (N, D)."""
    return _engine.pseudo_input(_timm_vit.view(model, need_pos=True), pos=pos, dtype=dtype)
