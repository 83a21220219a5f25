"""``FitSpec``: every input of an impulse fit in one frozen, validated record.

The public ``fit_impulse`` builds one (validating every argument once, by name, before any work), the disk cache
keys on a digest of all its fields (a field added later can never give a stale hit), and ``fitting.api`` maps
(method, backend) to the function that runs it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._validate import (choice, finite_tensor, grid_pair, odd_kernel_size, positive_float, positive_int,
                         require_memory)
from ..targets import TARGET_SHAPES, check_offsets, cycle_offsets, kernel_fits_grid

METHODS = ("closed_form", "iterative")
FIT_BACKENDS = ("auto", "reference", "cpp", "cuda")
RENORM_MODES = ("code", "columns", "none")
# The compiled op's renorm interval is a C int; steps are int64.
MAX_RENORM_EVERY = 2 ** 31 - 1
MAX_STEPS = 2 ** 62


def resolve_scale(scale, dim: int, head_dim: int, num_heads: int) -> float:
    """The softmax scale for a fit: a positive number, or "auto" (the published logit budget at any size:
    0.1 at D=512, r=64, 8 heads, scaled by 512·r·heads/D² elsewhere)."""
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"scale must be a positive number or 'auto', got {scale!r}")
        return 0.1 * 512 * head_dim * num_heads / (dim * dim)
    return positive_float(scale, "scale")


def _unit_interval(value, name: str, closed_low: bool = False) -> float:
    value = positive_float(value, name, allow_zero=closed_low)
    if value >= 1:
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}0, 1), got {value}")
    return value


@dataclass(frozen=True)
class FitSpec:
    """What to fit. Q, K of every head are (D, head_dim); maps are softmax(scale · X Q Kᵀ Xᵀ) with
    X = (1 − alpha) · pseudo_input (the 2D sin-cos encoding of the grid when ``pseudo_input`` is None)."""

    num_heads: int
    grid_size: Tuple[int, int]
    kernel_size: int
    dim: int
    head_dim: int
    method: str
    layers: int
    seed: int
    offsets: Optional[Tuple[Tuple[Tuple[int, int], ...], ...]]   # (layers, heads, 2), or None: drawn from seed
    scale: float
    alpha: float
    pseudo_input: Optional[torch.Tensor]
    backend: str                 # resolved for the iterative method; "reference" for the closed form
    # iterative recipe
    steps: int
    lr: float
    renorm_every: int
    renorm: str
    dedup: bool
    tol: Optional[float]
    check_every: int
    # closed form
    target: str
    target_mass: float
    logit_scale: Optional[float]
    pinv_rtol: float
    noise_std: float

    @property
    def tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def key_fields(self) -> dict:
        """Every field, for the cache key (tensors are digested by the cache)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


OFFSET_ORDERS = ("random", "cycle")


def _offsets(offsets, layers: int, num_heads: int, kernel_size: int):
    """None (drawn from the seed), "cycle" (every layer cycles through the k×k window, head h taking position
    h mod k², row-major: with heads >= k² every offset is used), or explicit (heads, 2) / (layers, heads, 2)."""
    if offsets is None or (isinstance(offsets, str) and offsets == "random"):
        return None
    if isinstance(offsets, str):
        if offsets != "cycle":
            raise ValueError(f"offsets must be 'random', 'cycle' or integer offsets, got {offsets!r}")
        offsets = cycle_offsets(num_heads, kernel_size)
    t = torch.as_tensor(offsets)
    shape = tuple(t.shape)
    if t.dim() == 2:
        t = t[None].expand(layers, -1, -1)
    if t.dim() != 3 or tuple(t.shape) != (layers, num_heads, 2):
        raise ValueError(f"offsets must have shape (num_heads, 2) = ({num_heads}, 2) or (layers, num_heads, 2) = "
                         f"({layers}, {num_heads}, 2), got {shape}")
    t = check_offsets(t.reshape(-1, 2), kernel_size).reshape(layers, num_heads, 2)
    return tuple(tuple(tuple(int(v) for v in o) for o in layer) for layer in t.tolist())


def make_spec(num_heads, grid_size, kernel_size, dim, head_dim, method, steps, seed, backend, *, layers, offsets,
              scale, lr, renorm_every, renorm, alpha, pseudo_input, target, target_mass, logit_scale, pinv_rtol,
              noise_std, dedup, tol, check_every) -> FitSpec:
    """Validate every argument of ``fit_impulse`` (each error names its argument) and freeze them."""
    num_heads = positive_int(num_heads, "num_heads")
    grid = grid_pair(grid_size)
    kernel_size = odd_kernel_size(kernel_size)
    kernel_fits_grid(kernel_size, grid)
    dim = positive_int(dim, "dim")
    head_dim = positive_int(head_dim, "head_dim")
    choice(method, "method", METHODS)
    choice(backend, "backend", FIT_BACKENDS)
    layers = positive_int(layers, "layers")
    seed = positive_int(seed, "seed", minimum=0)
    if seed >= 2 ** 63:
        raise ValueError(f"seed must be < 2**63, got {seed}")
    scale = resolve_scale(scale, dim, head_dim, num_heads)
    choice(renorm, "renorm", RENORM_MODES)
    steps = positive_int(steps, "steps", minimum=0)
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be <= 2**62, got {steps}")
    lr = positive_float(lr, "lr")
    renorm_every = positive_int(renorm_every, "renorm_every", minimum=0)
    if renorm_every > MAX_RENORM_EVERY:
        raise ValueError(f"renorm_every must be <= 2**31 - 1 (0 turns renormalization off), got {renorm_every}")
    alpha = _unit_interval(alpha, "alpha", closed_low=True)
    choice(target, "target", TARGET_SHAPES)
    target_mass = _unit_interval(target_mass, "target_mass")
    if logit_scale is not None:
        logit_scale = positive_float(logit_scale, "logit_scale")
    pinv_rtol = _unit_interval(pinv_rtol, "pinv_rtol")
    noise_std = positive_float(noise_std, "noise_std", allow_zero=True)
    if not isinstance(dedup, bool):
        raise TypeError(f"dedup must be a bool, got {type(dedup).__name__} {dedup!r}")
    if tol is not None:
        tol = positive_float(tol, "tol")
    check_every = positive_int(check_every, "check_every")
    if method != "iterative" and (dedup or tol is not None):
        raise ValueError("dedup and tol apply to method='iterative' only")
    n = grid[0] * grid[1]
    if pseudo_input is not None:
        finite_tensor(pseudo_input, "pseudo_input")
        if tuple(pseudo_input.shape) != (n, dim):
            raise ValueError(f"pseudo_input must have shape (N, dim) = ({n}, {dim}) for grid {grid}, got "
                             f"{tuple(pseudo_input.shape)}")
        pseudo_input = pseudo_input.detach().to(device="cpu", dtype=torch.float32).clone()
    elif dim % 4 != 0 or dim < 8:
        raise ValueError(f"dim must be a multiple of 4 and >= 8 for the 2D sin-cos pseudo-input, got {dim} (or pass "
                         f"pseudo_input)")
    # Targets (float32) and, for the closed form, float64 logits and maps of every head are held at once.
    per_head = n * n * (4 + (24 if method == "closed_form" else 12))
    require_memory(layers * num_heads * per_head, f"an impulse fit of {layers} x {num_heads} heads on {n} tokens",
                   "fit fewer heads or layers per call, or a smaller grid")
    return FitSpec(num_heads=num_heads, grid_size=grid, kernel_size=kernel_size, dim=dim, head_dim=head_dim,
                   method=method, layers=layers, seed=seed, offsets=_offsets(offsets, layers, num_heads, kernel_size),
                   scale=scale, alpha=alpha, pseudo_input=pseudo_input, backend=backend, steps=steps, lr=lr,
                   renorm_every=renorm_every, renorm=renorm, dedup=dedup, tol=tol, check_every=check_every,
                   target=target, target_mass=target_mass, logit_scale=logit_scale, pinv_rtol=pinv_rtol,
                   noise_std=noise_std)
