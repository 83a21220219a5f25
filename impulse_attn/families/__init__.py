"""One init call for every model family users train on small data: ``impulse_attn.init_(model, init)``.

A family adapter (one file each) finds a model's attention or token-mixing layers and exposes them through the
protocols of ``impulse_attn.init`` (query/key layers, window position biases, token-mixing MLPs); every registered
strategy (``impulse_attn.init.strategies``, one file each) acts on the layer kinds it has a handler for, and a
strategy that cannot apply to a family is refused in one line.

==================  ===================================  =====================================================
family              models                               what "impulse" sets
==================  ===================================  =====================================================
simple_vit          ``impulse_attn.SimpleViT``            query/key fit on each layer's pseudo-input
timm_vit            timm ``VisionTransformer``           the structured init (pos_embed ×18, query/key fit on
                                                         LN(pos_embed), value/projection)
hf_vit              transformers ViT / DeiT              the same as timm_vit (equal maps for equal sizes)
timm_swin           timm ``SwinTransformer`` (v1)        relative position bias tables (impulse logits)
timm_mixer          timm ``MlpMixer``                    token-mixing MLPs (a bank of shifts)
==================  ===================================  =====================================================
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._validate import choice, kwargs_dict, odd_kernel_size, seed_int
from ..init.registry import get_strategy
from . import hf_vit, simple_vit, timm_mixer, timm_swin, timm_vit  # noqa: F401  (each registers its family)
from .base import Family, InitReport, families, family_of

__all__ = ["init_", "attention_maps", "family_of", "families", "Family", "InitReport"]


def init_(model: torch.nn.Module, init: str = "impulse", *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None,
          images: Optional[torch.Tensor] = None, **options) -> InitReport:
    """Initialize ``model`` in place with a registered init strategy, through its family's adapter.

    Args:
        model: a Simple ViT, timm ViT, timm Swin Transformer, timm MLP-Mixer or Hugging Face ViT/DeiT.
        init: a registered init strategy: "impulse", "mimetic", "random", "official", "default" (keep the model's
            own init), or one registered since (``impulse_attn.init.register_strategy``).
        seed: the init's random stream (private generators; the global ones are untouched).
        kernel_size: the impulse window k (default: 5 for the Simple ViT, 3 elsewhere, as the papers).
        fit_method, fit_kwargs: the query/key fit ("closed_form" or "iterative"; ``fit_impulse`` keywords) where
            the family has one.
        images: (B, C, H, W) a batch of training images, as the model's forward takes them. The report then
            measures the prior on them (``report.data``: per layer argmax hit and mass on the offset, position or
            bias share; ``families.on_data``), and a standard ViT's impulse init calibrates its position scale on
            them (without images: on unit-variance pixels). Read only.
        **options: settings of the init: standard ViTs ``position_share`` (impulse), Swin ``target_mass`` (window
            bias), Mixer ``gain`` (token mixing).
    Returns:
        InitReport: per layer the offsets and, where measured, argmax hit and target mass of the maps at init (on
        the pseudo-input), and ``data``: the same on ``images``.
    Raises:
        TypeError: a model no family knows. ValueError: a strategy that does not apply to the family, or
        settings it does not take (one line, before anything changes).
    """
    seed = seed_int(seed)
    if kernel_size is not None:
        kernel_size = odd_kernel_size(kernel_size)
    if fit_method is not None:
        choice(fit_method, "fit_method", ("closed_form", "iterative", "official"))
    fit_kwargs = kwargs_dict(fit_kwargs, "fit_kwargs") or None
    fam = family_of(model)
    strategy = get_strategy(init)
    kind = fam.kind_for(strategy)
    if images is not None:
        images = fam.check_images(model, images)
    report = fam.apply(model, strategy, kind, seed=seed, kernel_size=kernel_size, fit_method=fit_method,
                       fit_kwargs=fit_kwargs, options=options or None, images=images)
    if images is not None and fam.on_data is not None:
        report.data = fam.on_data(model, images, report.offsets)
        report.images = int(images.shape[0])
    return report


def attention_maps(model: torch.nn.Module, images: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Per layer, the model's maps (B, heads, N, N) on its token grid: attention maps (Swin: window maps placed on
    the stage's grid) or, for an MLP-Mixer, the token MLP's linearization per round of shifts. ``images=None``:
    the maps with no content (the position part alone), what the impulse init shapes."""
    return family_of(model).maps(model, images)
