"""One init call for every model family users train on small data: ``impulse_attn.init_(model, init)``.

A family (one file each, registered when imported) owns everything about its models: how to recognize one, which
layer kinds it exposes to the strategies through the protocols of ``impulse_attn.init`` (a standard ViT as a whole,
query/key layers, window position biases, token-mixing MLPs), its maps, the prior on data, its table of init
defaults, how ``--model`` names and builds it (``families.source``) and how ``inspect`` probes it. Every registered
strategy (``impulse_attn.init.strategies``, one file each) acts on the layer kinds it has a handler for, and a
strategy that cannot apply to a family is refused in one line. This package imports every module in its folder
that registers a family, so a new family is one new file (or one ``register_family`` call in user code).

==================  ===================================  =====================================================
family              models                               what "impulse" sets
==================  ===================================  =====================================================
simple_vit          ``impulse_attn.SimpleViT``            query/key fit on each layer's pseudo-input
convmixer           ``impulse_attn.ConvMixer``            nothing (its filters are set by --filters)
timm_vit            timm ``VisionTransformer``           the structured init (pos_embed calibrated, query/key
                                                         fit on LN(pos_embed), value/projection)
hf_vit              transformers ViT / DeiT              the same as timm_vit
timm_swin           timm ``SwinTransformer`` (v1)        relative position bias tables (impulse logits)
timm_mixer          timm ``MlpMixer``                    token-mixing MLPs (a bank of shifts)
tv_vit              torchvision ``VisionTransformer``    the same as timm_vit
tv_swin             torchvision ``SwinTransformer``      v1: as timm_swin; v2: "default" only (its
                                                         continuous position bias holds no table)
==================  ===================================  =====================================================
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._validate import choice, kwargs_dict, odd_kernel_size, seed_int
from ..init.registry import get_strategy
import importlib
import pkgutil

from .base import Family, InitReport, Probe, families, family_for_spec, family_of, model_values
from .source import BuildRequest, ModelSource

# The built-in families in the order their models are matched and listed, then any other family file here.
BUILTIN = ("simple_vit", "convmixer", "timm_vit", "timm_swin", "timm_mixer", "hf_vit", "tv_vit", "tv_swin")
_HELPERS = ("base", "source", "view", "adapters", "on_data", "calibration", "standard_vit", "standard_apply",
            "timm_registry")
for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in BUILTIN + _HELPERS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["init_", "attention_maps", "family_of", "family_for_spec", "families", "model_values", "Family",
           "InitReport", "Probe", "ModelSource", "BuildRequest"]


def init_(model: torch.nn.Module, init: str = "impulse", *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None,
          images: Optional[torch.Tensor] = None, **options) -> InitReport:
    """Initialize ``model`` in place with a registered init strategy, through its family's adapter.

    Args:
        model: a model of a registered family (``families()``): Simple ViT, ConvMixer, timm ViT, Swin and
            MLP-Mixer, Hugging Face ViT/DeiT, torchvision ViT and Swin.
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
    if any(p.is_meta for p in model.parameters()) if isinstance(model, torch.nn.Module) else False:
        raise ValueError("model's parameters are on the meta device (no values yet): materialize it first, e.g. "
                         "model.to_empty(device='cpu') and its own init")
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
    fam = family_of(model)
    if fam.maps is None:
        raise ValueError(f"a {fam.label} has no attention or token-mixing maps")
    if images is not None:
        images = fam.check_images(model, images)
    return fam.maps(model, images)
