"""Applying an init strategy to a standard ViT (timm or Hugging Face), whichever view its family builds.

"impulse", "official" and "mimetic" are realized as the structured-init paper does it on a standard ViT
(``standard_vit.structured_init_``: position embedding ×18, query/key fit on LN(position embedding),
value/projection init), so the official fit stays bit for bit the authors'. Any other strategy reaches the blocks
through its query/key handler (``adapters.BlockQKLayer``, pseudo-input LN(position embedding)).
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

ENGINE_INITS = ("impulse", "official", "mimetic")


def standard_apply(view_of: Callable[..., ViTView], label: str) -> Callable[..., InitReport]:
    def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
              fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None,
              options: Optional[dict] = None, images=None) -> InitReport:
        start = time.perf_counter()
        k = 3 if kernel_size is None else kernel_size
        options = dict(options or {})
        share = options.pop("position_share", None)
        if options:
            raise ValueError(f"options {sorted(options)} do not apply to a {label} (it takes position_share; fit "
                             f"settings go in fit_kwargs)")
        if share is not None and strategy.name != "impulse":
            raise ValueError(f"position_share sets the calibrated position scale of the impulse init; it does not "
                             f"apply to init {strategy.name!r}")
        if kind == "":
            view_of(model, need_pos=False)
            return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start)
        if strategy.name in ENGINE_INITS:
            init = "mimetic" if strategy.name == "mimetic" else "impulse"
            if strategy.name == "official" and fit_method not in (None, "official"):
                raise ValueError(f"init 'official' is its own fit; fit_method {fit_method!r} does not apply")
            if init == "mimetic" and fit_method not in (None, "official", "closed_form"):
                raise ValueError(f"fit_method {fit_method!r} does not apply to the mimetic init")
            engine_fit = "official" if strategy.name == "official" else (fit_method or "closed_form")
            view = view_of(model, need_pos=init == "impulse")
            extra = dict(fit_kwargs or {})
            if init == "impulse" and engine_fit != "official":
                extra.update(images=images, position_share=share)
            src = standard_vit.structured_init_(view, init, fit_method=engine_fit, kernel_size=k, seed=seed,
                                                **extra)
            layers = [{"offsets": None if src.offsets is None else src.offsets[i]} for i in range(view.depth)]
            for layer, b in zip(layers, src.blocks):
                layer.update(argmax_hit=b.argmax_hit, target_mass=b.target_mass, mse=b.mse)
            return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start, layers, src,
                              [str(src).splitlines()[0]])
        view = view_of(model, need_pos=strategy.needs_pseudo_input)
        x = (lambda: standard_vit.pseudo_input(view).float()) if view.pos is not None else None
        layers = [BlockQKLayer(b, view.grid, x) for b in view.blocks]
        src = initialize_qk_(layers, strategy.name, seed=seed, fit_method=fit_method or "closed_form",
                             kernel_size=k, fit_kwargs=fit_kwargs)
        return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start,
                          [{"offsets": layer.offsets} for layer in layers], src)
    return apply


def standard_family(name: str, label: str, matches: Callable, view_of: Callable[..., ViTView]) -> Family:
    """Register a standard-ViT family: its init through ``standard_apply``, its maps through the engine."""
    def maps(model, images=None):
        return standard_vit.attention_maps(view_of(model, need_pos=images is None), images)

    def on_data(model, images, offsets):
        return standard_vit.on_data(view_of(model, need_pos=False), images, offsets)

    def input_shape(model):
        return view_of(model, need_pos=False).input_shape
    return register_family(Family(name, label, matches, ("qk",), standard_apply(view_of, label), maps,
                                  on_data=on_data, input_shape=input_shape))
