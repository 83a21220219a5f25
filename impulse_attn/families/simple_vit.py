"""This package's Simple ViT (``--model vit``): its attention layers implement the query/key protocol themselves, and
its constructor takes the run's init (the softmax scale follows it)."""
from __future__ import annotations

import time
from typing import List, Optional

import torch

from ..attention import FIT_DEFAULTS, ImpulseAttention
from ..init.registry import Strategy
from ..models import SimpleViT
from .base import Family, InitReport, Probe, capture_inputs, register_family
from .on_data import position_share, with_quality
from .source import BuildRequest, ModelSource

NAME = "Simple ViT"


def matches(model) -> bool:
    return isinstance(model, SimpleViT)


def apply(model: SimpleViT, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
    start = time.perf_counter()
    k = 5 if kernel_size is None else kernel_size
    # a Simple ViT's only init settings are its query/key fit's: options and fit_kwargs are one set here
    settings = {**(fit_kwargs or {}), **(options or {})}
    src = model.init_weights(strategy.name, seed=seed, fit_method=fit_method or "closed_form", kernel_size=k,
                             fit_kwargs=settings or None)
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
        out.append(with_quality(row, offsets, i, lambda: layer.attention_map(x), model.grid_size))
    return out


def probe(model: SimpleViT, offsets=None) -> Probe:
    """Every attention layer on the token grid; with no content: the maps of zero tokens (mode I's queries and keys
    then read (1 − α)·P, a plain layer LN(P))."""
    def zero_tokens():
        z = torch.zeros(1, model.grid_size[0] * model.grid_size[1], model.head.in_features,
                        dtype=model.head.weight.dtype, device=model.head.weight.device)
        return [layer.attention_map(z + model.pos.to(z) if model.add_pos else z) for layer in model.attention_layers()]
    return Probe(tuple(model.grid_size),
                 [getattr(layer, "impulse_offsets", None) for layer in model.attention_layers()],
                 model.attention_maps, zero_tokens, "simple_vit")


def build(r: BuildRequest) -> SimpleViT:
    """The Simple ViT of the run: its init (and the fit's settings) at construction, every other size and switch from
    the config's fields of the same names."""
    c = r.config
    init = c.init if r.qk_init else "default"
    settings = dict(r.init_settings) if r.qk_init else {}
    return SimpleViT(image_size=r.image_size, num_classes=r.num_classes, channels=r.channels, init=init,
                     fit_kwargs=settings or None, seed=c.seed,
                     **c.arguments_for(SimpleViT, exclude=("image_size", "init", "seed")))


SOURCE = ModelSource(
    spec="vit", build=build, inits_itself=True,
    flags=("dim", "depth", "num_heads", "head_dim", "mlp_dim", "patch_size", "kernel_size", "attention", "mode",
           "alpha", "scale", "attention_backend", "value_init"),
    defaults={"dim": 512, "depth": 6, "kernel_size": 5, "num_heads": 8, "head_dim": 64, "mlp_dim": 512},
    parameters=lambda c: c.depth * (4 * c.dim * c.num_heads * c.head_dim + 2 * c.dim * c.mlp_dim),
    describe="vit: the Simple ViT of the paper (ImpulseAttention, or plain attention with --attention plain)",
    examples=("vit",))

FAMILY = register_family(Family("simple_vit", NAME, matches, ("qk",), apply, maps, on_data=on_data,
                                input_shape=lambda m: (int(m.channels), *(int(v) for v in m.image_size)),
                                source=SOURCE, probe=probe, fit_defaults=FIT_DEFAULTS,
                                grid_of=lambda m: tuple(m.grid_size)))
