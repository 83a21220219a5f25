"""This package's ConvMixer (``--model convmixer``): no attention and no token-mixing MLP, so it exposes no layer
kind to the init strategies; its spatial filters are set by ``--filters`` (a filter bank, learned or frozen) at
construction. ``init_(model, "default")`` keeps it; every other strategy is refused by name."""
from __future__ import annotations

from typing import Optional

from ..init.registry import Strategy
from ..models import ConvMixer
from .base import Family, InitReport, register_family
from .source import BuildRequest, ModelSource

NAME = "ConvMixer"


def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
    return InitReport(NAME, strategy.name, seed, kind, 0.0)


def build(r: BuildRequest) -> ConvMixer:
    c = r.config
    return ConvMixer(image_size=r.image_size, patch_size=c.patch_size, num_classes=r.num_classes, dim=c.dim,
                     depth=c.depth, kernel_size=c.kernel_size, channels=r.channels, filters=c.filters,
                     freeze=c.freeze, box_n=c.box_n, seed=c.seed)


def check(r: BuildRequest) -> None:
    c = r.config
    if c.filters == "box" and c.box_n is not None and c.box_n > c.kernel_size ** 2:
        raise ValueError(f"--box-n must be in [1, {c.kernel_size ** 2}] (k² for --kernel-size {c.kernel_size}), got "
                         f"{c.box_n}: use fewer ones per box filter")


SOURCE = ModelSource(
    spec="convmixer", build=build, inits_itself=True, check=check,
    flags=("dim", "depth", "kernel_size", "patch_size", "filters", "freeze", "box_n"),
    # (the ViT sizes it ignores are filled too, so that its saved settings read as they always have)
    defaults={"dim": 256, "depth": 8, "kernel_size": 3, "num_heads": 8, "head_dim": 64, "mlp_dim": 512},
    parameters=lambda c: c.depth * (c.dim * c.kernel_size ** 2 + c.dim * c.dim),
    describe="convmixer: the ConvMixer of the filter-bank study (--filters, --freeze)", examples=("convmixer",))

FAMILY = register_family(Family("convmixer", NAME, lambda m: isinstance(m, ConvMixer), (), apply, None,
                                pseudo_input=False, source=SOURCE))
