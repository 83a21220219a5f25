"""Applying an init strategy to a standard ViT (timm, Hugging Face, torchvision), whichever view its family builds.

The registry dispatches: a strategy with a ``vit`` handler (impulse, official, mimetic) gets the whole model through
``standard_vit.run_vit_strategy`` (its handler writes the blocks; the family then scales or calibrates the
position embedding as the handler's plan asks); any other reaches the blocks through its ``qk`` handler
(``adapters.BlockQKLayer``, pseudo-input LN(position embedding)). No strategy is named here.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..init.apply import initialize_qk_
from ..init.registry import Strategy
from . import standard_vit
from .adapters import BlockQKLayer
from .base import Family, InitReport, register_family
from .view import ViTView


def standard_apply(view_of: Callable[..., ViTView], label: str) -> Callable[..., InitReport]:
    def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
              fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None,
              options: Optional[dict] = None, images=None) -> InitReport:
        start = time.perf_counter()
        view = view_of(model, need_pos=False)
        if kind == "":
            return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start)
        if kind == "vit":
            src = standard_vit.run_vit_strategy(view, strategy, seed=seed, fit_method=fit_method,
                                                kernel_size=kernel_size, fit_kwargs=fit_kwargs, options=options,
                                                images=images)
            layers = [{"offsets": None if src.offsets is None else src.offsets[i]} for i in range(view.depth)]
            for layer, b in zip(layers, src.blocks):
                layer.update(argmax_hit=b.argmax_hit, target_mass=b.target_mass, mse=b.mse)
            return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start, layers, src,
                              [str(src).splitlines()[0]])
        settings = {**(fit_kwargs or {}), **(options or {})}      # one set of settings for a qk handler
        if strategy.needs_pseudo_input:
            view_of(model, need_pos=True)
        x = (lambda: standard_vit.pseudo_input(view).float()) if view.pos is not None else None
        layers = [BlockQKLayer(b, view.grid, x, standard_vit.FIT_DEFAULTS) for b in view.blocks]
        src = initialize_qk_(layers, strategy.name, seed=seed, fit_method=strategy.check_fit_method(fit_method),
                             kernel_size=3 if kernel_size is None else kernel_size, fit_kwargs=settings or None)
        return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start,
                          [{"offsets": layer.offsets} for layer in layers], src)
    return apply


def standard_family(name: str, label: str, matches: Callable, view_of: Callable[..., ViTView], **extra) -> Family:
    """Register a standard-ViT family: its init through ``standard_apply``, its maps through the engine."""
    def maps(model, images=None):
        return standard_vit.attention_maps(view_of(model, need_pos=images is None), images)

    def on_data(model, images, offsets):
        return standard_vit.on_data(view_of(model, need_pos=False), images, offsets)

    def input_shape(model):
        return view_of(model, need_pos=False).input_shape
    return register_family(Family(name, label, matches, ("vit", "qk"), standard_apply(view_of, label), maps,
                                  on_data=on_data, input_shape=input_shape, **extra))
