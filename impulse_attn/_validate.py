"""Argument checks shared by the public API.

Every public function calls these before doing any work, so bad input fails with a message that names the
argument and what was expected instead of a shape error deep inside a matmul. Integers may be Python or numpy
integers (anything with ``__index__`` that is not a bool); booleans may be Python or numpy bools, nothing else
(a string such as "no" is truthy, and an int is too easily a slip).
"""
from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping
from typing import Iterable, Optional, Tuple

import torch

# Set to a number of bytes to cap what one call may allocate (default: the memory available when it is asked).
MEMORY_BUDGET_ENV = "IMPULSE_ATTN_MEMORY_BUDGET"


def as_int(value, name: str) -> int:
    """An int from a Python or numpy integer; bools and floats are refused."""
    if isinstance(value, bool) or isinstance(value, float) or (isinstance(value, torch.Tensor) and
                                                               value.is_floating_point()):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def as_bool(value, name: str) -> bool:
    """A bool from a Python or numpy bool; strings, ints, None and everything else are refused."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool" and type(value).__module__ == "numpy":  # numpy.bool_ (numpy not imported)
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")


MAX_SEED = 2 ** 63 - 1


def seed_int(value, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: a Python or numpy int in [0, 2**63 - 1]."""
    value = as_int(value, name)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**63 - 1], got {value}")
    return value


def optional_generator(value, name: str = "generator") -> Optional[torch.Generator]:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__} {value!r}")
    return value


def kwargs_dict(value, name: str) -> dict:
    """None or a mapping with string keys (keyword arguments passed on), as a new dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of keyword arguments (str keys) or None, got "
                        f"{type(value).__name__} {value!r}"[:300])
    return dict(value)


def float_dtype(value, name: str = "dtype") -> torch.dtype:
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype (e.g. torch.float32), got {value!r}")
    return value


def at_most(value: float, name: str, high: float, why: str) -> float:
    """Refuse a (validated) number above ``high``: a range that is plainly a mistake."""
    if value > high:
        raise ValueError(f"{name} must be <= {high:g} ({why}), got {value:g}")
    return value


def at_least(value: float, name: str, low: float, why: str) -> float:
    if value < low:
        raise ValueError(f"{name} must be >= {low:g} ({why}), got {value:g}")
    return value


def float_tensor(t, name: str) -> torch.Tensor:
    """A floating-point tensor without NaN or Inf."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return finite_tensor(t, name)


def model_input(x, name: str, like: torch.Tensor) -> torch.Tensor:
    """An input for a module whose parameters are ``like``: a floating-point tensor of the parameters' dtype (any
    floating dtype under autocast, which casts inside the module) on their device. PyTorch modules do not cast
    their inputs, so a float64 batch for a float32 model is refused here, by name, not deep inside a matmul."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} (convert it, e.g. "
                        f"{name}.float())")
    if x.device != like.device and like.device.type != "meta":
        raise ValueError(f"{name} is on {x.device} but the model is on {like.device}: move one of them "
                         f"(model.to(device) or {name}.to(device))")
    if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {like.dtype}: cast the input "
                        f"({name}.to({like.dtype})) or the model (model.to({x.dtype})), or run under torch.autocast")
    return x


def grid_pair(grid_size, name: str = "grid_size") -> Tuple[int, int]:
    """Normalize an int or (H, W) pair to a tuple of two positive ints."""
    if isinstance(grid_size, torch.Size):
        grid_size = tuple(grid_size)
    if isinstance(grid_size, (tuple, list)):
        if len(grid_size) != 2:
            raise TypeError(f"{name} must be an int or a pair (H, W) of ints, got {grid_size!r}")
        try:
            h, w = (as_int(v, name) for v in grid_size)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (H, W) of ints, got {grid_size!r}") from None
    else:
        try:
            h = w = as_int(grid_size, name)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (H, W) of ints, got {grid_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must hold positive ints, got {grid_size!r}")
    return h, w


def positive_int(value, name: str, minimum: int = 1) -> int:
    value = as_int(value, name)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def odd_kernel_size(value, name: str = "kernel_size") -> int:
    value = positive_int(value, name)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (the window is centred on the token), got {value}")
    return value


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def choice(value, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def finite_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def image_grid(image_size, patch_size) -> tuple:
    """Validate an image size and patch size; return ((H, W), token grid (H/ph, W/pw))."""
    ih, iw = grid_pair(image_size, "image_size")
    ph, pw = grid_pair(patch_size, "patch_size")
    if ih % ph or iw % pw:
        raise ValueError(f"image_size {(ih, iw)} must be divisible by patch_size {(ph, pw)}")
    return (ih, iw), (ih // ph, iw // pw)


def available_memory(device: Optional[torch.device] = None) -> Optional[int]:
    """Bytes that one allocation may take on ``device``: the budget from IMPULSE_ATTN_MEMORY_BUDGET when set,
    otherwise what the device has free (host: MemAvailable); None when it cannot be told."""
    budget = os.environ.get(MEMORY_BUDGET_ENV)
    if budget:
        try:
            return int(float(budget))
        except ValueError:
            raise ValueError(f"{MEMORY_BUDGET_ENV} must be a number of bytes, got {budget!r}") from None
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str, fix: str, device: Optional[torch.device] = None) -> None:
    """Refuse, before allocating, work whose memory would exceed the budget of ``available_memory``."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB "
                         f"available: {fix}")


def heads_divide(dim, heads, dim_name: str = "dim", heads_name: str = "num_heads") -> None:
    """Refuse a width that the head count does not divide (every head gets dim / heads channels); None (a size left
    to the model) passes."""
    if dim is not None and heads is not None and heads and dim % heads:
        raise ValueError(f"{dim_name} {dim} is not divisible by {heads_name} {heads} (each head gets dim / heads "
                         f"channels): change one of them")

