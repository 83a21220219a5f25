"""``fit_impulse``: the one entry point for fitting query/key weights to impulse attention maps."""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

import torch

from .._validate import choice, finite_tensor, grid_pair, odd_kernel_size, positive_float, positive_int
from ..targets import (TARGET_SHAPES, check_offsets, draw_offsets, impulse_targets, logit_target, sincos_2d,
                       valid_rows)
from .cache import FitCache, cache_key
from .closed_form import fit_closed_form
from .fast import fit_iterative_fast
from .iterative import RENORM_MODES, fit_iterative_reference, init_qk
from .report import FitResult, evaluate_fit, warn_if_uniform

log = logging.getLogger(__name__)

METHODS = ("iterative", "closed_form")
FIT_BACKENDS = ("auto", "reference", "cpp", "cuda")


def resolve_scale(scale, dim: int, rank: int, num_heads: int) -> float:
    """The softmax scale for a fit: a positive number, or "auto" (the paper's logit budget at any size)."""
    if scale == "auto":
        return 0.1 * 512 * rank * num_heads / (dim * dim)
    return positive_float(scale, "scale")


def fit_impulse(num_heads: int, grid_size=(16, 16), kernel_size: int = 5, dim: int = 512, rank: int = 64,
                method: str = "iterative", steps: int = 10000, seed: int = 0, backend: str = "auto", *,
                layers: int = 1, offsets=None, scale=0.1, lr: float = 1e-4, renorm_every: int = 100,
                renorm: str = "code", alpha: float = 0.0, pseudo_input: Optional[torch.Tensor] = None,
                target: str = "impulse", target_mass: float = 0.3, logit_scale: Optional[float] = None, pinv_rtol: float = 0.03,
                noise_std: float = 0.0, warn: bool = True, progress: bool = False, cache_dir=None,
                dedup: bool = False, tol: Optional[float] = None, check_every: int = 100) -> FitResult:
    """Fit Q, K so that softmax(scale · X Q Kᵀ Xᵀ) reproduces one random impulse (shift) map per head.

    Args:
        num_heads: heads per layer; each gets one offset from the k×k window.
        grid_size: token grid, an int or (H, W); N = H·W.
        kernel_size: odd window size k the offsets are drawn from (5 in the 2401.12511 code).
        dim: model width D; rank: head dimension r.
        method: ``"iterative"`` (the published Adam recipe) or ``"closed_form"`` (projection + SVD).
        steps, lr, renorm_every, renorm: the iterative recipe (published defaults 10000, 1e-4, 100, "code";
            ``renorm="columns"`` rescales K's columns as the paper text says, the public code rescales K's rows).
        seed: seeds the offsets and the init; results are deterministic for a given seed.
        backend: ``"reference"`` (plain PyTorch autograd), ``"cpp"``/``"cuda"`` (compiled fit, when built) or
            ``"auto"`` (the fastest available). Closed form always runs in PyTorch.
        layers: independent fits (fresh offsets per layer) batched in one call.
        offsets: explicit (heads, 2) or (layers, heads, 2) integer offsets instead of random ones.
        scale: the softmax scale s (0.1 in the published code; the model uses the same scale), or ``"auto"``:
            0.1 at the paper's size (D=512, r=64, 8 heads) and scaled by 512·r·heads/D² elsewhere, which keeps the
            logit budget of the published init (it grows like s·D²/(r·heads)) at every model size.
        alpha: fit on the pseudo-input X = (1 − α)·P, the positional part of Model I's query/key input; 0 fits on
            P itself as the public code does.
        pseudo_input: an explicit (N, D) X instead of the sin-cos encoding (e.g. LN(P) for a standard ViT).
        target: the closed form's target logits around each head's offset, ``"impulse"`` (row match + column
            match) or ``"laplace"`` (minus the city-block distance to the target: a local blob), see
            ``targets.logit_target``.
        target_mass, logit_scale, pinv_rtol, noise_std: closed-form sharpness and conditioning (see
            ``fitting.closed_form``).
        warn: emit a RuntimeWarning when the fit is no better than a uniform map.
        cache_dir: a directory for a disk cache of fits keyed by every argument that changes the result (see
            ``fitting.cache``); ``report.extra["cache"]`` says "hit", "miss" or why an entry was refitted.
        dedup, tol, check_every: a faster iterative fit that is NOT the published recipe (``fitting.fast``,
            labelled in ``report.extra["algorithm"]``): ``dedup=True`` fits each distinct target once and gives
            every head with that target the same Q, K; ``tol`` stops a head once its loss improved by less than
            ``tol`` (relative) over the last ``check_every`` steps. Off by default.
    Returns:
        FitResult with ``q``, ``k`` (heads, D, r) — (layers, heads, D, r) when layers > 1 — ``offsets`` and
        ``report`` (mse, uniform_mse, argmax_hit, target_mass, seconds, ...).
    """
    positive_int(num_heads, "num_heads")
    h, w = grid_pair(grid_size)
    odd_kernel_size(kernel_size)
    positive_int(dim, "dim")
    positive_int(rank, "rank")
    choice(method, "method", METHODS)
    choice(target, "target", TARGET_SHAPES)
    choice(backend, "backend", FIT_BACKENDS)
    positive_int(layers, "layers")
    scale = resolve_scale(scale, dim, rank, num_heads)
    choice(renorm, "renorm", RENORM_MODES)
    if method == "iterative":
        positive_int(steps, "steps", minimum=0)
        positive_float(lr, "lr")
        positive_int(renorm_every, "renorm_every", minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    alpha = positive_float(alpha, "alpha", allow_zero=True)
    if alpha >= 1:
        raise ValueError(f"alpha must be in [0, 1): at alpha = 1 the query/key input has no positional part, got "
                         f"{alpha}")
    positive_float(target_mass, "target_mass")
    if target_mass >= 1:
        raise ValueError(f"target_mass must be in (0, 1), got {target_mass}")
    if not isinstance(dedup, bool):
        raise TypeError(f"dedup must be a bool, got {type(dedup).__name__} {dedup!r}")
    if tol is not None:
        tol = positive_float(tol, "tol")
    positive_int(check_every, "check_every")
    if method != "iterative" and (dedup or tol is not None):
        raise ValueError("dedup and tol apply to method='iterative' only")
    cache = FitCache(cache_dir) if cache_dir is not None else None
    n = h * w
    if pseudo_input is None:
        x = sincos_2d((h, w), dim, dtype=torch.float32) * (1 - alpha)
    else:
        finite_tensor(pseudo_input, "pseudo_input")
        if tuple(pseudo_input.shape) != (n, dim):
            raise ValueError(f"pseudo_input must have shape (N, dim) = ({n}, {dim}) for grid {(h, w)}, got "
                             f"{tuple(pseudo_input.shape)}")
        x = pseudo_input.detach().to(torch.float32).cpu()

    gen = torch.Generator().manual_seed(seed)
    if offsets is None:
        offs = torch.stack([draw_offsets(num_heads, kernel_size, generator=gen) for _ in range(layers)])
    else:
        offs = check_offsets(torch.as_tensor(offsets).reshape(-1, 2), kernel_size).reshape(
            *torch.as_tensor(offsets).shape)
        if offs.dim() == 2:
            offs = offs[None].expand(layers, -1, -1)
        if tuple(offs.shape) != (layers, num_heads, 2):
            raise ValueError(f"offsets must have shape (num_heads, 2) = ({num_heads}, 2) or (layers, num_heads, 2)"
                             f" = ({layers}, {num_heads}, 2), got {tuple(torch.as_tensor(offsets).shape)}")
    flat = offs.reshape(-1, 2)
    targets = impulse_targets(flat, (h, w)).reshape(layers, num_heads, n, n)
    valid = valid_rows(flat, (h, w)).reshape(layers, num_heads, n)

    start = time.perf_counter()
    used = "reference"
    if method == "iterative":
        from ..backends import select_fit_backend
        used = select_fit_backend(backend)
    key = cache_status = None
    if cache is not None:
        import impulse_attn
        key = cache_key(dict(
            package=impulse_attn.__version__, torch=torch.__version__, method=method, backend=used,
            layers=layers, num_heads=num_heads, grid=[h, w], kernel_size=kernel_size, dim=dim, rank=rank,
            seed=seed, offsets=offs, x=x, scale=scale, steps=steps, lr=lr, renorm_every=renorm_every,
            renorm=renorm, target=target, target_mass=target_mass, logit_scale=logit_scale, pinv_rtol=pinv_rtol,
            noise_std=noise_std, dedup=dedup, tol=tol, check_every=check_every))
        shape = (layers, num_heads, dim, rank)
        entry, cache_status = cache.load(key, {"q": (shape, torch.float32), "k": (shape, torch.float32)})
        if cache_status.startswith("corrupt"):
            log.warning("impulse fit cache: entry %s is %s; refitting", cache.path(key), cache_status)
    if cache is not None and entry is not None:
        q, k = entry["tensors"]["q"], entry["tensors"]["k"]
        extra = dict(entry["meta"].get("extra", {}))
        steps_done = int(entry["meta"].get("steps_done", 0))
    elif method == "closed_form":
        logits = logit_target(flat, (h, w), target).reshape(layers, num_heads, n, n)
        q, k, beta = fit_closed_form(x, logits, targets, valid, rank, scale=scale, target_mass=target_mass,
                                     logit_scale=logit_scale, pinv_rtol=pinv_rtol, noise_std=noise_std,
                                     generator=gen)
        extra = {"logit_scale": beta, "pinv_rtol": pinv_rtol, "target": target}
        steps_done = 0
    else:
        q0, k0 = init_qk(layers, num_heads, dim, rank, gen)
        kwargs = dict(steps=steps, lr=lr, scale=scale, renorm_every=renorm_every, renorm=renorm, q0=q0, k0=k0)
        extra = {"renorm": renorm, "lr": lr}
        steps_done = steps
        if dedup or tol is not None:
            q, k, info = fit_iterative_fast(x, targets, rank, dedup=dedup, tol=tol, check_every=check_every,
                                            backend=used, **kwargs)
            extra.update(info.as_dict())
            steps_done = int(info.steps_run.max())
        elif used == "reference":
            q, k = fit_iterative_reference(x, targets, rank, progress=progress, **kwargs)
        else:
            from ..kernels import fit_ext
            q, k = fit_ext.fit_iterative(x, targets, rank, device="cuda" if used == "cuda" else "cpu", **kwargs)
    if cache is not None:
        if entry is None:
            cache.store(key, {"q": q.float(), "k": k.float()}, {"extra": extra, "steps_done": steps_done})
        extra = {**extra, "cache": cache_status}
    seconds = time.perf_counter() - start
    report = evaluate_fit(x, q, k, scale, targets, valid, seconds, method, used, steps_done,
                          content_alpha=alpha if alpha > 0 else 0.0, seed=seed)
    report.extra.update(extra)
    log.info("impulse fit: %s", report)
    if warn:
        warn_if_uniform(report)
    if layers == 1:
        q, k, offs = q[0], k[0], offs[0]
    return FitResult(q=q.float(), k=k.float(), offsets=offs.clone(), scale=scale, report=report)
