"""``FitSpec``: every input of an impulse fit in one frozen, validated record.

The public ``fit_impulse`` builds one (validating every argument once, by name, before any work), the disk cache
keys on a digest of all its fields (a field added later can never give a stale hit), and ``fitting.api`` maps
(fit method, backend) to the function that runs it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .._validate import (as_bool, at_least, at_most, choice, finite_tensor, grid_pair, odd_kernel_size, positive_float, positive_int,
                         require_memory, seed_int)
from ..targets import TARGET_SHAPES, check_offsets, cycle_offsets, kernel_fits_grid

FIT_METHODS = ("closed_form", "iterative")
FIT_BACKENDS = ("auto", "reference", "cpp", "cuda")
RENORM_MODES = ("code", "columns", "none")
# The compiled op's renorm interval is a C int.
MAX_RENORM_EVERY = 2 ** 31 - 1
# A sane maximum of iterative steps (the published recipe takes 10,000): a typo such as 2**70 is refused instead
# of running for ever.
MAX_STEPS = 10_000_000


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


OFFSET_ORDERS = ("random", "cycle")


def option(help: str, kind: str, flag: Optional[str] = None, fit_methods: Sequence[str] = FIT_METHODS,
           choices: Optional[Callable[[], Sequence[str]]] = None):
    """A FitSpec field with its command-line face: the ``fit`` command's flags are generated from these.

    ``kind``: how a flag value is read ("int", "float", "optional_float", "str", "bool", "scale": a number or
    "auto"); ``flag``: the flag (default: --<name>); ``fit_methods``: the fit methods that use it (a flag given
    for another fit method is refused); ``choices``: a callable returning the allowed values."""
    return field(metadata=dict(help=help, kind=kind, flag=flag, fit_methods=tuple(fit_methods), choices=choices))


_ITERATIVE = ("iterative",)
_CLOSED_FORM = ("closed_form",)


@dataclass(frozen=True)
class FitSpec:
    """What to fit. Q, K of every head are (D, head_dim); maps are softmax(scale · X Q Kᵀ Xᵀ) with
    X = (1 − alpha) · pseudo_input (the 2D sin-cos encoding of the grid when ``pseudo_input`` is None)."""

    num_heads: int = option("heads per layer (one offset each)", "int")
    grid_size: Tuple[int, int] = option("token grid side", "int", flag="--grid")
    kernel_size: int = option("odd window k the offsets come from", "int")
    dim: int = option("model width D", "int")
    head_dim: int = option("head dim r (rank of Q Kᵀ)", "int")
    fit_method: str = option("fit method: closed_form (projection + SVD, instant) or iterative (the published "
                             "Adam recipe)", "str", flag="--fit-method", choices=lambda: FIT_METHODS)
    layers: int = option("independent fits, one per layer, fresh offsets each (the picture shows the first)", "int")
    seed: int = option("seed of the offsets and the init", "int")
    # (layers, heads, 2), or None: drawn from seed
    offsets: Optional[Tuple[Tuple[Tuple[int, int], ...], ...]] = option(
        "offsets: random (drawn from the seed, fresh for every layer) or cycle (head h takes window position h mod "
        "k² in every layer)", "str", flag="--fit-offsets", choices=lambda: OFFSET_ORDERS)
    scale: float = option("softmax scale s, or 'auto' (the published logit budget at any size: 0.1 at D=512, r=64, "
                          "8 heads)", "scale")
    alpha: float = option("fit on (1−α)·P: α is Model I's content weight", "float")
    pseudo_input: Optional[torch.Tensor] = field(metadata={})     # a tensor: the Python API only
    # resolved for the iterative fit method; "reference" for the closed form
    backend: str = option("where the iterative fit runs (auto: the fastest that passes its parity probe)", "str",
                          flag="--fit-backend", fit_methods=_ITERATIVE, choices=lambda: FIT_BACKENDS)
    # iterative recipe
    steps: int = option(f"steps of the iterative fit (at most {MAX_STEPS})", "int", flag="--fit-steps",
                        fit_methods=_ITERATIVE)
    lr: float = option("Adam learning rate of the iterative fit", "float", flag="--fit-lr", fit_methods=_ITERATIVE)
    renorm_every: int = option("renormalize every N steps (0: never)", "int", fit_methods=_ITERATIVE)
    renorm: str = option("renormalization: code (K's rows, as the public code), columns (as the paper's text) or "
                         "none", "str", fit_methods=_ITERATIVE, choices=lambda: RENORM_MODES)
    dedup: bool = option("fit each distinct target once (faster, not the published recipe)", "bool",
                         fit_methods=_ITERATIVE)
    tol: Optional[float] = option("stop a head once its loss improves by less than this (relative) over "
                                  "--check-every steps (not the published recipe)", "optional_float",
                                  fit_methods=_ITERATIVE)
    check_every: int = option("steps between the --tol checks", "int", fit_methods=_ITERATIVE)
    # closed form
    target: str = option("closed-form target logits around each offset: impulse (row match + column match) or "
                         "laplace (a local blob)", "str", flag="--fit-target", fit_methods=_CLOSED_FORM,
                         choices=lambda: TARGET_SHAPES)
    target_mass: float = option("closed-form sharpness: mean attention mass on the target", "float",
                                fit_methods=_CLOSED_FORM)
    logit_scale: Optional[float] = option("closed-form logit scale instead of --target-mass", "optional_float",
                                          fit_methods=_CLOSED_FORM)
    pinv_rtol: float = option("closed-form pseudo-inverse cutoff (relative)", "float", fit_methods=_CLOSED_FORM)
    noise_std: float = option("closed-form noise added to break ties", "float", fit_methods=_CLOSED_FORM)

    @property
    def tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def key_fields(self) -> dict:
        """Every field, for the cache key (tensors are digested by the cache)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def cli_fields() -> List[dataclasses.Field]:
    """The fields that are ``fit`` command flags (all but the pseudo-input tensor), in order."""
    return [f for f in dataclasses.fields(FitSpec) if "kind" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


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


# Ranges outside of which an argument is plainly a mistake (each refused with its reason, before any work).
MAX_LR = 1e3
SCALE_RANGE = (1e-8, 1e8)
MAX_LOGIT_SCALE = 1e6
MAX_NOISE_STD = 1e6


def _check_ranges(spec: FitSpec, scale_given: bool) -> None:
    if scale_given:
        why = "the published softmax scale is 0.1; Q Kᵀ carries 1/scale, so far from it Q, K leave float32's range"
        at_least(spec.scale, "scale", SCALE_RANGE[0], why)
        at_most(spec.scale, "scale", SCALE_RANGE[1], why)
    if spec.fit_method == "iterative":
        at_most(spec.lr, "lr", MAX_LR, "Adam moves every weight by about lr per step, and the weights start below 1; "
                "the published rate is 1e-4")
    else:
        if spec.logit_scale is not None:
            at_most(spec.logit_scale, "logit_scale", MAX_LOGIT_SCALE, "the target logits are of order 1; beyond "
                    "this every softmax is one-hot in float32")
        at_most(spec.noise_std, "noise_std", MAX_NOISE_STD, "the target logits are of order 1; the published noise "
                "std is 3 (on logits of 1000)")


def make_spec(num_heads, grid_size, kernel_size, dim, head_dim, fit_method, steps, seed, backend, *, layers, offsets,
              scale, lr, renorm_every, renorm, alpha, pseudo_input, target, target_mass, logit_scale, pinv_rtol,
              noise_std, dedup, tol, check_every) -> FitSpec:
    """Validate every argument of ``fit_impulse`` (each error names its argument) and freeze them."""
    num_heads = positive_int(num_heads, "num_heads")
    grid = grid_pair(grid_size)
    kernel_size = odd_kernel_size(kernel_size)
    kernel_fits_grid(kernel_size, grid)
    dim = positive_int(dim, "dim")
    head_dim = positive_int(head_dim, "head_dim")
    choice(fit_method, "fit_method", FIT_METHODS)
    choice(backend, "backend", FIT_BACKENDS)
    layers = positive_int(layers, "layers")
    seed = seed_int(seed)
    scale_given = not isinstance(scale, str)
    scale = resolve_scale(scale, dim, head_dim, num_heads)
    choice(renorm, "renorm", RENORM_MODES)
    steps = positive_int(steps, "steps", minimum=0)
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be <= {MAX_STEPS}, got {steps}")
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
    dedup = as_bool(dedup, "dedup")
    if tol is not None:
        tol = positive_float(tol, "tol")
    check_every = positive_int(check_every, "check_every")
    if fit_method != "iterative" and (dedup or tol is not None):
        raise ValueError("dedup and tol apply to fit_method='iterative' only")
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
    # Everything a fit holds at once, every size factor counted: per head the N×N targets, maps and (closed form)
    # float64 logits and the SVD of the kept k×k core (k <= min(N, D)); Q, K (layers, heads, D, r) with their
    # float64 init, gradients and Adam moments (or float64 closed-form factors) and the float32 results; the
    # pseudo-input (N, D) with its float64 SVD.
    closed, heads = fit_method == "closed_form", layers * num_heads
    per_head = n * n * (4 + (24 if closed else 12)) + (32 * min(n, dim) ** 2 if closed else 0)
    nbytes = heads * per_head + heads * dim * head_dim * (32 if closed else 48) + n * dim * (32 if closed else 12)
    require_memory(nbytes,
                   f"layers {layers}, num_heads {num_heads}, dim {dim}, head_dim {head_dim}, grid_size {grid}: an "
                   f"impulse fit of this size",
                   "fit fewer heads or layers per call, a smaller dim, head_dim or grid")
    spec = FitSpec(num_heads=num_heads, grid_size=grid, kernel_size=kernel_size, dim=dim, head_dim=head_dim,
                   fit_method=fit_method, layers=layers, seed=seed,
                   offsets=_offsets(offsets, layers, num_heads, kernel_size),
                   scale=scale, alpha=alpha, pseudo_input=pseudo_input, backend=backend, steps=steps, lr=lr,
                   renorm_every=renorm_every, renorm=renorm, dedup=dedup, tol=tol, check_every=check_every,
                   target=target, target_mass=target_mass, logit_scale=logit_scale, pinv_rtol=pinv_rtol,
                   noise_std=noise_std)
    _check_ranges(spec, scale_given)
    return spec
