"""Python side of the compiled impulse fit (``impulse_attn._C``, sources in ``csrc/``).

The ops (``torch.ops.impulse_attn.fit_iterative`` and ``fit_gradients``) take the pseudo-input X (N, D) in
factored form X = A·B (A: N×k, B: k×D). The 2D sin-cos encoding of a 16×16 grid has numerical rank 27 at
float32 resolution whatever D is, so routing every product through the factors cuts the matmul work about 6×
while Adam and the renormalization still act on the full D×r Q and K: the iterates are the published recipe's up
to rounding. ``factor_basis`` builds A, B from an SVD in float64 and keeps every singular value above
``rtol``·σ_max (1e-8 for float32, below float32's resolution of X itself; 1e-13 for float64).

This module checks every argument before any kernel runs (errors name the argument), registers the ops' fake
implementations for ``torch.compile`` / ``torch.library.opcheck``, and never fails to import: without the
extension, ``available()`` says why and the package's reference path is used.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch

from .._validate import choice, positive_float, positive_int
from ..fitting import reduced
from ..fitting.iterative import RENORM_MODES, init_norm, init_qk

try:
    from .. import _C  # registers torch.ops.impulse_attn.*
    _IMPORT_ERROR = ""
except ImportError as _e:  # pragma: no cover - exercised only on installs without the extension
    _C = None
    _IMPORT_ERROR = f"impulse_attn._C is not built ({_e}); run `pip install --no-build-isolation -e .`"

ADAM_BETAS = reduced.ADAM_BETAS
ADAM_EPS = reduced.ADAM_EPS


def available(device: str = "cpu") -> Tuple[bool, str]:
    """Whether the compiled fit can run on ``device`` ("cpu" or "cuda"), and why not."""
    if _C is None:
        return False, _IMPORT_ERROR
    if str(device).startswith("cuda"):
        if not _C.has_cuda():
            return False, "impulse_attn._C was built without CUDA sources"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
    return True, ""


def _require(device: torch.device) -> None:
    ok, why = available(device.type)
    if not ok:
        raise RuntimeError(f"device={str(device)!r}: the compiled fit cannot run there: {why}")


if _C is not None:
    @torch.library.register_fake("impulse_attn::fit_iterative")
    def _fit_iterative_fake(a, b, targets, q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k, norm0, step0,
                            steps, lr, scale, renorm_every, renorm_mode, beta1=0.9, beta2=0.999, eps=1e-8,
                            loss_heads=0, plan=-1):
        torch._check(k.shape == q.shape, lambda: "k must have the shape of q")
        torch._check(targets.shape[:2] == q.shape[:2], lambda: "targets must be (layers, heads, N, N) like q")
        outs = [torch.empty_like(t) for t in (q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k, exp_avg_sq_k)]
        return (*outs, q.new_empty(q.shape[:2]))

    @torch.library.register_fake("impulse_attn::fit_gradients")
    def _fit_gradients_fake(a, b, targets, q, k, scale, loss_heads=0, plan=-1):
        torch._check(k.shape == q.shape, lambda: "k must have the shape of q")
        return torch.empty_like(q), torch.empty_like(k), q.new_empty(q.shape[:2])


# ----------------------------------------------------------------------------------------------------------------
# argument checks

def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device must be 'cpu' or 'cuda' (or a torch.device), got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def _dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _tensor(t, name: str, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the fit's dtype), got {t.dtype}")
    if t.device.type not in ("cpu", device.type):
        raise ValueError(f"{name} is on {t.device}, the fit runs on {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def _x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (N, D) with N, D >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf values")
    return x


def _free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
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


def _check_memory(layers: int, heads: int, n: int, d: int, r: int, dtype: torch.dtype,
                  device: torch.device) -> None:
    """Refuse, before allocating, a problem whose outputs and working copies cannot fit in free memory."""
    item = torch.empty((), dtype=dtype).element_size()
    # targets (one copy when moved or cast) + Q, K and four moments, in and out, + per-thread scratch
    need = item * (layers * heads * (n * n + 12 * d * r) + torch.get_num_threads() * (8 * d * r + 4 * n * 64))
    free = _free_bytes(device)
    if free is not None and need > free:
        raise ValueError(f"targets: {layers} layers x {heads} heads on {n} tokens need about {need / 2**30:.2f} GiB "
                         f"on {device}, only {free / 2**30:.2f} GiB is free; fit fewer heads per call")


def factor_basis(x: torch.Tensor, rtol: Optional[float] = None,
                 dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """X (N, D) -> A (N, k), B (k, D), X = A·B up to singular values below rtol·σ_max (see
    ``fitting.reduced.factor_basis``), with its arguments checked."""
    x = _x(x)
    dtype = _dtype(dtype)
    if rtol is not None:
        rtol = positive_float(rtol, "basis_rtol")
        if rtol >= 1:
            raise ValueError(f"basis_rtol must be < 1, got {rtol}")
    return reduced.factor_basis(x, rtol, dtype)


def _prepare(x, targets, q, k, rank, device, dtype, basis_rtol, need_memory_check=True):
    device = _device(device)
    dtype = _dtype(dtype)
    x = _x(x)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    targets = _tensor(targets, "targets", 4, dtype, device)
    n, dim = x.shape
    layers, heads = targets.shape[:2]
    if layers < 1 or heads < 1:
        raise ValueError(f"targets must hold at least one layer and one head, got shape {tuple(targets.shape)}")
    if tuple(targets.shape[2:]) != (n, n):
        raise ValueError(f"targets must have shape (layers, heads, N, N) with N = x.shape[0] = {n}, got "
                         f"{tuple(targets.shape)}")
    rank = positive_int(rank, "rank")
    expected = (layers, heads, dim, rank)
    for t, name in ((q, "q0"), (k, "k0")):
        _tensor(t, name, 4, dtype, device)
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape (layers, heads, D, rank) = {expected}, got {tuple(t.shape)}")
    _require(device)
    if need_memory_check:
        _check_memory(layers, heads, n, dim, rank, dtype, device)
    a, b = factor_basis(x, basis_rtol, dtype)
    to = dict(device=device, dtype=dtype)
    return (a.to(**to), b.to(**to), targets.to(**to).contiguous(), q.to(**to).contiguous(),
            k.to(**to).contiguous(), device)


def run_steps(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, state: tuple, norm0: torch.Tensor,
              step0: int, steps: int, *, lr: float, scale: float, renorm_every: int, renorm: str,
              loss_heads: int = 0) -> tuple:
    """Advance a prepared fit by ``steps`` Adam steps. ``state`` = (q, k, exp_avg_q, exp_avg_sq_q, exp_avg_k,
    exp_avg_sq_k), all (layers, heads, D, r) on the device; returns the new state and each head's loss (mean over
    N² of (p − t)² at the last step's forward pass, before its update). Internal: inputs are trusted."""
    out = torch.ops.impulse_attn.fit_iterative(a, b, targets, *state, norm0, int(step0), int(steps), float(lr),
                                               float(scale), int(renorm_every), RENORM_MODES.index(renorm),
                                               ADAM_BETAS[0], ADAM_BETAS[1], ADAM_EPS, int(loss_heads))
    return tuple(out[:6]), out[6]


def fit_iterative(x: torch.Tensor, targets: torch.Tensor, rank: int, *, device: Union[str, torch.device] = "cpu",
                  steps: int = 10000, lr: float = 1e-4, scale: float = 0.1, renorm_every: int = 100,
                  renorm: str = "code", q0: Optional[torch.Tensor] = None, k0: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                  basis_rtol: Optional[float] = None, return_loss: bool = False):
    """The published recipe through the compiled kernels: same arguments and iterates as
    ``fitting.iterative.fit_iterative_reference``.

    x (N, D), targets (layers, heads, N, N) -> Q, K (layers, heads, D, rank) on the CPU, in ``dtype`` (float32;
    float64 runs on the CPU only). ``q0``/``k0`` default to the published init drawn from ``generator``.
    ``return_loss`` adds each head's final loss (layers, heads).
    """
    dtype = _dtype(dtype)
    positive_int(steps, "steps", minimum=0)
    lr = positive_float(lr, "lr")
    scale = positive_float(scale, "scale")
    positive_int(renorm_every, "renorm_every", minimum=0)
    choice(renorm, "renorm", RENORM_MODES)
    dev = _device(device)
    if dev.type == "cuda" and dtype != torch.float32:
        raise TypeError(f"dtype must be torch.float32 on CUDA, got {dtype}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if q0 is None or k0 is None:
        if targets.dim() != 4:
            raise ValueError(f"targets must have shape (layers, heads, N, N), got {tuple(targets.shape)}")
        _x(x)
        rank = positive_int(rank, "rank")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        q0, k0 = init_qk(targets.shape[0], targets.shape[1], x.shape[1], rank, gen, dtype=dtype)
    a, b, t, q, k, dev = _prepare(x, targets, q0, k0, rank, dev, dtype, basis_rtol)
    norm0 = init_norm(q).reshape(-1).contiguous()
    zeros = [torch.zeros_like(q) for _ in range(4)]
    state, loss = run_steps(a, b, t, (q, k, *zeros), norm0, 0, steps, lr=lr, scale=scale,
                            renorm_every=renorm_every, renorm=renorm)
    q_out, k_out = state[0].cpu(), state[1].cpu()
    if return_loss:
        return q_out, k_out, loss.cpu()
    return q_out, k_out


def fit_gradients(x: torch.Tensor, targets: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, *,
                  device: Union[str, torch.device] = "cpu", basis_rtol: Optional[float] = None):
    """d loss / d Q, K of the recipe's loss (sum over layers of the mean over heads·N·N of (p − t)²) at Q, K,
    computed by the fused kernel; returns (dq, dk, per-head loss), on the CPU, in q's dtype."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape (layers, heads, D, r), got {tuple(q.shape)}")
    dtype = _dtype(q.dtype)
    scale = positive_float(scale, "scale")
    a, b, t, qd, kd, dev = _prepare(x, targets, q, k, q.shape[-1], device, dtype, basis_rtol)
    dq, dk, loss = torch.ops.impulse_attn.fit_gradients(a, b, t, qd, kd, scale, 0)
    return dq.cpu(), dk.cpu(), loss.cpu()
