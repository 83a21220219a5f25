"""What several strategies share: applying a per-layer draw of Q, K to query/key layers."""
from __future__ import annotations

from typing import Callable, List

import torch

from ..._validate import require_memory
from ..protocol import QKLayer, QKRequest


def independent(make: Callable, bytes_per_head: Callable[[int, int], int]) -> Callable:
    """A qk handler that draws Q, K (heads, D_in, head_dim) per layer with ``make(heads, D_in, r, generator)``."""
    def apply(layers: List[QKLayer], requests: List[QKRequest], generator: torch.Generator, **_):
        for r in requests:
            require_memory(r.num_heads * bytes_per_head(r.dim_in, r.head_dim),
                           f"the {make.__name__} init of {r.num_heads} heads of width {r.dim_in}", "use smaller sizes")
        for layer, r in zip(layers, requests):
            layer.load_qk(*make(r.num_heads, r.dim_in, r.head_dim, generator))
        return None
    return apply


def write_paper_vproj(layers, block: int, uniform: Callable, scale: float, mimetic_orientation: bool) -> None:
    """One block's value and output projection from the structured-init paper's ``get_ortho_like(D, heads, 0.4,
    0.4, -1)``: L R = 0.4·Z − 0.4·I (Z uniform, variance 1/D, from the numpy stream ``uniform``), times ``scale``.

    The code's impulse branch stores W_v = Lᵀ, W_proj = Rᵀ, so value-then-projection is x ↦ x L R = x A (the
    mimetic paper's W_v W_proj ≈ αZ − βI); its mimetic branch stores W_v = L, W_proj = R (x ↦ x (R L)ᵀ), which
    ``mimetic_orientation`` reproduces."""
    from ...fitting.structured import VPROJ_IDENTITY_GAIN, VPROJ_NOISE_GAIN, VPROJ_SIGN, ortho_like
    dim = layers.request.dim
    left, right = ortho_like(dim, VPROJ_NOISE_GAIN, VPROJ_IDENTITY_GAIN, VPROJ_SIGN, uniform)
    if mimetic_orientation:
        layers.write_vproj(block, scale * torch.tensor(left).float(), scale * torch.tensor(right).float())
    else:
        layers.write_vproj(block, scale * torch.tensor(left.T).float(), scale * torch.tensor(right.T).float())


def vit_settings(given: dict, allowed: dict, init: str) -> dict:
    """``allowed`` (name → default) overridden by ``given``; a name not in ``allowed`` is refused in one line."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown} do not apply to init {init!r} on a standard ViT (it takes "
                         f"{sorted(allowed) or 'no settings'})")
    return {**allowed, **given}


def positive_scale(value, name: str):
    """None, or a finite float > 0 (a scale the caller overrides a paper constant with)."""
    from ..._validate import positive_float
    return None if value is None else positive_float(value, name)


def check_vit_geometry(request, kernel_size: int, init: str, needs_position: bool = True) -> None:
    """What every fitted map on a standard ViT needs: a position embedding, no query/key norm, offsets that stay
    on the grid."""
    if needs_position and not request.has_position:
        raise ValueError(f"model has no position embedding (e.g. pos_embed='none'): init {init!r} fits the "
                         f"query/key maps on the layer-normed position embedding")
    if request.qk_norm:
        raise ValueError("a block normalizes queries and keys (qk_norm=True): the normalization rescales every "
                         "logit, so no fitted map survives it")
    half = kernel_size // 2
    if half >= min(request.grid):
        raise ValueError(f"kernel_size {kernel_size} reaches past a {request.grid[0]}x{request.grid[1]} grid: "
                         f"offsets of ±{half} tokens leave no valid row")
