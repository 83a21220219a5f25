"""This package's Simple ViT: its attention layers implement the query/key protocol themselves."""
from __future__ import annotations

import time
from typing import List, Optional

import torch

from ..attention import ImpulseAttention
from ..init.registry import Strategy
from ..models import SimpleViT
from .base import Family, InitReport, capture_inputs, register_family
from .on_data import map_quality, position_share

NAME = "Simple ViT"


def matches(model) -> bool:
    return isinstance(model, SimpleViT)


def apply(model: SimpleViT, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
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


def _qk_input(layer, x: torch.Tensor):
    """(what the layer's queries and keys read on tokens x, its position part), None where it has none: mode I
    α·LN(x) + (1 − α)·P, mode II P, mode III nothing; a plain ViT layer LN(x) with P added upstream."""
    xn = layer.norm(x)
    if isinstance(layer, ImpulseAttention):
        if layer.mode == "III":
            return None, None
        pos = layer.pos.to(xn)
        return (pos.expand_as(xn) if layer.mode == "II" else layer.alpha * xn + (1 - layer.alpha) * pos), pos
    return xn, None


@torch.no_grad()
def on_data(model: SimpleViT, images: torch.Tensor, offsets) -> List[dict]:
    layers = model.attention_layers()
    captured = capture_inputs(model, layers, model, images)
    out = []
    for i, (layer, x) in enumerate(zip(layers, captured)):
        u, pos = _qk_input(layer, x)
        if pos is None and u is not None and model.add_pos:
            pos = model.pos
        row = {"position_share": position_share(u, pos) if pos is not None else None}
        off = offsets[i] if offsets is not None and i < len(offsets) else None
        if off is not None:
            q = map_quality(layer.attention_map(x), torch.as_tensor(off), model.grid_size)
            row.update(argmax_hit=q["argmax_hit"], target_mass=q["target_mass"])
        out.append(row)
    return out


FAMILY = register_family(Family("simple_vit", NAME, matches, ("qk",), apply, maps, on_data=on_data,
                                input_shape=lambda m: (int(m.channels), *(int(v) for v in m.image_size))))
