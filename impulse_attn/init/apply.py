"""Applying a registered strategy to query/key layers (``initialize_qk_``), and a layer's default softmax scale."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validate import choice, kwargs_dict, odd_kernel_size, seed_int
from .protocol import QKLayer
from ..fitting.spec import FIT_METHODS
from .registry import INIT_STRATEGIES, get_strategy



def default_scale(init: str, fit_method: str, num_heads: int, dim_in: int, head_dim: int) -> float:
    """A layer's softmax scale when none is given: for impulse init the published 0.1 kept at the published logit
    budget ("auto": 0.1·512·r·heads/D², exactly 0.1 at the paper's size, ``fitting.resolve_scale``), with either
    fit method; head_dim^-0.5 otherwise.

    The map on the pseudo-input does not depend on the scale (the fit puts 1/s into Q Kᵀ), but how fast training
    moves it does: a larger s means smaller Q, K for the same map, and Adam's steps move small weights relatively
    more. The published recipe needs "auto" to learn at all below the paper's width; the closed form at "auto"
    trains like the recipe (docs/RESULTS.md).
    """
    if init != "impulse":
        return head_dim ** -0.5
    from ..fitting import resolve_scale
    return resolve_scale("auto", dim_in, head_dim, num_heads)


def initialize_qk_(layers: Sequence[QKLayer], init: str, *, seed: int = 0, fit_method: Optional[str] = None,
                   kernel_size: int = 5, fit_kwargs: Optional[dict] = None) -> Optional[list]:
    """Initialize the query/key weights of attention ``layers`` in place with the registered init strategy ``init``'s
    ``qk`` handler. Returns the FitResults for "impulse" (one per batch of layers with equal settings: normally one for
    the whole model).

    Layers with equal requests are fitted together (one batched fit, fresh offsets per layer).
    """
    choice(init, "init", INIT_STRATEGIES)
    seed = seed_int(seed)
    strategy = get_strategy(init)
    if fit_method is not None:
        choice(fit_method, "fit_method", FIT_METHODS)
    # a strategy that is its own fit (random, official) reads none; the layers pass their default along
    fit_method = strategy.check_fit_method(fit_method) if strategy.fit_methods else fit_method
    kernel_size = odd_kernel_size(kernel_size)
    fit_kwargs = kwargs_dict(fit_kwargs, "fit_kwargs")
    layers = list(layers)
    if strategy.keeps_model or not layers:
        return None
    if strategy.qk is None:
        raise ValueError(f"init {init!r} does not apply to query/key attention layers (it sets "
                         f"{', '.join(k for k in ('window_bias', 'token_mix') if strategy.handler(k))} only)")
    for layer in layers:
        if not isinstance(layer, QKLayer):
            raise TypeError(f"layers must implement qk_request() and load_qk() (QKLayer), got "
                            f"{type(layer).__name__}")
    requests = [layer.qk_request(with_pseudo_input=strategy.needs_pseudo_input) for layer in layers]
    return strategy.qk(layers, requests, torch.Generator().manual_seed(seed), seed=seed, fit_method=fit_method,
                    kernel_size=kernel_size, fit_kwargs=fit_kwargs)
