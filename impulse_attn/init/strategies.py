"""Query/key init strategies: default, random, mimetic, impulse (docs/METHOD.md, "Init strategies").

Each strategy produces, per attention layer, Q and K of shape (heads, D_in, head_dim) from the layer's
``QKRequest`` and hands them to ``layer.load_qk``. Adding a strategy means adding a function to ``STRATEGIES``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .._validate import choice, require_memory
from .protocol import QKLayer, QKRequest, VProjLayer


def random_qk(heads: int, dim_in: int, head_dim: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Q, K ~ U(±sqrt(1/D))."""
    bound = math.sqrt(1.0 / dim_in)
    q = (2 * torch.rand(heads, dim_in, head_dim, generator=generator) - 1) * bound
    k = (2 * torch.rand(heads, dim_in, head_dim, generator=generator) - 1) * bound
    return q, k


def mimetic_qk(heads: int, dim_in: int, head_dim: int, generator: torch.Generator, alpha: float = 0.7,
               beta: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Trockman & Kolter's mimetic init: W = α·sqrt(1/D)·U(−1, 1) + β·I per head, Q Kᵀ = its best rank-r part."""
    noise = 2 * torch.rand(heads, dim_in, dim_in, generator=generator, dtype=torch.float64) - 1
    w = alpha * math.sqrt(1.0 / dim_in) * noise + beta * torch.eye(dim_in, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w)
    root = s[:, :head_dim].sqrt()
    q = u[:, :, :head_dim] * root[:, None, :]
    k = vh[:, :head_dim, :].transpose(1, 2) * root[:, None, :]
    if head_dim > dim_in:
        pad = torch.zeros(heads, dim_in, head_dim - dim_in, dtype=torch.float64)
        q, k = torch.cat((q, pad), -1), torch.cat((k, pad), -1)
    return q.float(), k.float()


# The closed form's defaults in a model: a local, soft map (docs/RESULTS.md, "Why the closed form lagged the
# recipe"). fit_impulse itself keeps the published values (target "impulse", mass 0.3).
CLOSED_FORM_DEFAULTS = {"target": "laplace", "target_mass": 0.1}


def mimetic_vproj(dim: int, inner: int, generator: torch.Generator, alpha: float = 0.4, beta: float = -0.4
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The later versions' value/projection init (after Trockman & Kolter): value-then-projection is x ↦ x·A with
    A = α·sqrt(1/D)·U(−1, 1) + β·I (α = 0.4, β = −0.4), its best rank-``inner`` part when inner < D.

    Returns W_v (inner, D) and W_out (D, inner) for ``Linear`` layers: x W_vᵀ W_outᵀ = x (W_out W_v)ᵀ = x A."""
    noise = 2 * torch.rand(dim, dim, generator=generator, dtype=torch.float64) - 1
    a = alpha * math.sqrt(1.0 / dim) * noise + beta * torch.eye(dim, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(a.T)                     # Aᵀ = W_out W_v
    k = min(inner, dim)
    root = s[:k].sqrt()
    w_out = torch.zeros(dim, inner, dtype=torch.float64)
    w_v = torch.zeros(inner, dim, dtype=torch.float64)
    w_out[:, :k] = u[:, :k] * root
    w_v[:k] = root[:, None] * vh[:k]
    return w_v.float(), w_out.float()


VALUE_INITS = ("default", "mimetic")


def initialize_vproj_(layers: Sequence[QKLayer], strategy: str, *, seed: int = 0) -> None:
    """Initialize the value and output projections of attention ``layers`` in place: "default" leaves PyTorch's
    init, "mimetic" sets value-then-projection to ≈ 0.4·Z − 0.4·I (``mimetic_vproj``), fresh per layer."""
    choice(strategy, "value_init", VALUE_INITS)
    if strategy == "default":
        return
    gen = torch.Generator().manual_seed(seed + 7919)  # not the query/key init's stream
    for layer in layers:
        if not isinstance(layer, VProjLayer):
            raise TypeError(f"layers must implement qk_request() and load_vproj() (VProjLayer), got "
                            f"{type(layer).__name__}")
    for layer in layers:
        r = layer.qk_request(with_pseudo_input=False)
        require_memory(32 * r.model_dim * r.model_dim, f"the mimetic value init of width {r.model_dim}",
                       "use smaller sizes")
        layer.load_vproj(*mimetic_vproj(r.model_dim, r.num_heads * r.head_dim, gen))


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


def _independent(make: Callable, bytes_per_head: Callable[[int, int], int]) -> Callable:
    def apply(layers: List[QKLayer], requests: List[QKRequest], generator: torch.Generator, **_):
        for r in requests:
            require_memory(r.num_heads * bytes_per_head(r.dim_in, r.head_dim),
                           f"the {make.__name__} init of {r.num_heads} heads of width {r.dim_in}", "use smaller sizes")
        for layer, r in zip(layers, requests):
            layer.load_qk(*make(r.num_heads, r.dim_in, r.head_dim, generator))
        return None
    return apply


def _impulse(layers: List[QKLayer], requests: List[QKRequest], generator: torch.Generator, *, seed: int,
             fit_method: str, kernel_size: int, fit_kwargs: Optional[dict]):
    from ..fitting import fit_impulse
    kwargs = dict(fit_kwargs or {})
    if fit_method == "closed_form":
        kwargs = {**CLOSED_FORM_DEFAULTS, **kwargs}
    if "scale" in kwargs:
        raise ValueError("fit_kwargs must not set 'scale': the fit uses the layer's softmax scale; pass scale= to "
                         "the layer (or model) instead")
    results = []
    groups: Dict[tuple, list] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.batch_key(), []).append(i)
    for gi, idx in enumerate(groups.values()):
        r = requests[idx[0]]
        x = r.pseudo_input
        for j in idx[1:]:
            if not torch.equal(requests[j].pseudo_input, x):
                raise ValueError("impulse init fits layers with equal settings in one batch; their pseudo-inputs "
                                 "differ")
        res = fit_impulse(r.num_heads, r.grid_size, kernel_size, r.dim_in, r.head_dim, method=fit_method,
                          seed=seed + gi, layers=len(idx), pseudo_input=x, alpha=r.alpha, scale=r.scale, **kwargs)
        for n, j in enumerate(idx):
            layers[j].load_qk(res.q[n], res.k[n], res.offsets[n])
        results.append(res)
    return results


# name -> function(layers, requests, generator, *, seed, fit_method, kernel_size, fit_kwargs) -> fit results
STRATEGIES: Dict[str, Optional[Callable]] = {
    "default": None,  # PyTorch's Kaiming-uniform init, untouched
    "random": _independent(random_qk, lambda d, r: 8 * d * r),
    "mimetic": _independent(mimetic_qk, lambda d, r: 32 * d * d),   # a D×D float64 matrix and its SVD
    "impulse": _impulse,
}
INIT_STRATEGIES = tuple(STRATEGIES)


def initialize_qk_(layers: Sequence[QKLayer], strategy: str, *, seed: int = 0, fit_method: str = "closed_form",
                   kernel_size: int = 5, fit_kwargs: Optional[dict] = None) -> Optional[list]:
    """Initialize the query/key weights of attention ``layers`` in place. Returns the FitResults for "impulse"
    (one per batch of layers with equal settings: normally one for the whole model).

    Layers with equal requests are fitted together (one batched fit, fresh offsets per layer).
    """
    choice(strategy, "init", INIT_STRATEGIES)
    layers = list(layers)
    apply = STRATEGIES[strategy]
    if apply is None or not layers:
        return None
    for layer in layers:
        if not isinstance(layer, QKLayer):
            raise TypeError(f"layers must implement qk_request() and load_qk() (QKLayer), got "
                            f"{type(layer).__name__}")
    requests = [layer.qk_request(with_pseudo_input=strategy == "impulse") for layer in layers]
    return apply(layers, requests, torch.Generator().manual_seed(seed), seed=seed, fit_method=fit_method,
                 kernel_size=kernel_size, fit_kwargs=fit_kwargs)
