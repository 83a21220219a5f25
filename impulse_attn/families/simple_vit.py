"""This package's Simple ViT: its attention layers implement the query/key protocol themselves."""
from __future__ import annotations

import time
from typing import Optional

from ..init.registry import Strategy
from ..models import SimpleViT
from .base import Family, InitReport, register_family

NAME = "Simple ViT"


def matches(model) -> bool:
    return isinstance(model, SimpleViT)


def apply(model: SimpleViT, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None
          ) -> InitReport:
    start = time.perf_counter()
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to a Simple ViT (fit settings go in fit_kwargs)")
    k = 5 if kernel_size is None else kernel_size
    src = model.init_weights(strategy.name, seed=seed, fit_method=fit_method or "closed_form", kernel_size=k,
                             fit_kwargs=fit_kwargs)
    layers = [{"offsets": getattr(layer, "impulse_offsets", None)} for layer in model.attention_layers()]
    if src:
        rep = src[0].report
        for layer in layers:
            layer.update(argmax_hit=rep.argmax_hit, target_mass=rep.target_mass)
    return InitReport(NAME, strategy.name, seed, kind, time.perf_counter() - start, layers, src,
                      [str(src[0].report)] if src else [])


def maps(model: SimpleViT, images=None):
    if images is None:
        return [layer.attention_map(None) for layer in model.attention_layers()]
    return model.attention_maps(images)


FAMILY = register_family(Family("simple_vit", NAME, matches, ("qk",), apply, maps))
