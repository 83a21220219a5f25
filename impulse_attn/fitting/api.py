"""``fit_impulse``: the one entry point for fitting query/key weights to impulse attention maps.

It is a spec and a dispatch: ``spec.make_spec`` validates every argument into a frozen ``FitSpec``; the disk
cache keys on a digest of all of its fields; ``RUNNERS`` maps the fit method to the function that runs it, and for
the iterative recipe ``ITERATIVE_BACKENDS`` maps the backend ("reference", "cpp", "cuda") to its function.
``backend="auto"`` tries the fastest backend that passes its parity probe and falls back (with one warning that
names the cause) to the next when one fails; an explicit backend raises instead.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from .._validate import as_bool, float_tensor
from ..targets import draw_offsets, impulse_targets, logit_target, sincos_2d, valid_rows
from . import backends as fit_backends
from .cache import FitCache, cache_key
from .closed_form import check_closed_form_work, fit_closed_form
from .fast import fit_iterative_fast
from .iterative import fit_iterative_reference, init_qk
from .report import FitResult, evaluate_fit, warn_if_uniform
from .spec import FIT_BACKENDS, FIT_METHODS, FitSpec, make_spec, resolve_scale

log = logging.getLogger(__name__)

__all__ = ["fit_impulse", "run_fit", "FitSpec", "FIT_METHODS", "FIT_BACKENDS", "resolve_scale", "RUNNERS",
           "ITERATIVE_BACKENDS"]


def _init_generator(seed: int) -> torch.Generator:
    # The init draws from its own stream, so passing offsets= equal to the ones the seed would draw gives the
    # same Q, K as not passing them (the cache relies on it).
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + 1) % 2 ** 63)


class _Problem:
    """The tensors every runner needs, built once from the spec."""

    def __init__(self, spec: FitSpec):
        h, w = spec.grid_size
        n = spec.tokens
        base = spec.pseudo_input if spec.pseudo_input is not None else sincos_2d((h, w), spec.dim)
        self.x = base.to(torch.float32) * (1 - spec.alpha)
        if spec.offsets is None:
            gen = torch.Generator().manual_seed(spec.seed)
            self.offsets = torch.stack([draw_offsets(spec.num_heads, spec.kernel_size, generator=gen)
                                        for _ in range(spec.layers)])
        else:
            self.offsets = torch.tensor(spec.offsets, dtype=torch.long)
        self.flat = self.offsets.reshape(-1, 2)
        self.targets = impulse_targets(self.flat, (h, w)).reshape(spec.layers, spec.num_heads, n, n)
        self.valid = valid_rows(self.flat, (h, w)).reshape(spec.layers, spec.num_heads, n)
        self.generator = _init_generator(spec.seed)


def _run_closed_form(spec: FitSpec, p: _Problem, backend: str, progress: bool):
    h, w = spec.grid_size
    n = spec.tokens
    logits = logit_target(p.flat, (h, w), spec.target).reshape(spec.layers, spec.num_heads, n, n)
    q, k, beta = fit_closed_form(p.x, logits, p.targets, p.valid, spec.head_dim, scale=spec.scale,
                                 target_mass=spec.target_mass, logit_scale=spec.logit_scale,
                                 pinv_rtol=spec.pinv_rtol, noise_std=spec.noise_std, generator=p.generator)
    return q, k, {"logit_scale": beta, "pinv_rtol": spec.pinv_rtol, "target": spec.target}, 0


def _reference(spec, p, q0, k0, device, progress):
    dev = torch.device(device)
    q, k = fit_iterative_reference(p.x.to(dev), p.targets.to(dev), spec.head_dim, steps=spec.steps, lr=spec.lr,
                                   scale=spec.scale, renorm_every=spec.renorm_every, renorm=spec.renorm,
                                   q0=q0.to(dev), k0=k0.to(dev), progress=progress)
    return q.cpu(), k.cpu()


def _compiled(spec, p, q0, k0, device, progress):
    from . import compiled as fit_ext
    return fit_ext.fit_iterative(p.x, p.targets, spec.head_dim, device=device, steps=spec.steps, lr=spec.lr,
                                 scale=spec.scale, renorm_every=spec.renorm_every, renorm=spec.renorm, q0=q0, k0=k0)


# backend -> function(spec, problem, q0, k0, device, progress) -> (q, k): the published recipe, same iterates.
ITERATIVE_BACKENDS: Dict[str, Callable] = {"reference": _reference, "cpp": _compiled, "cuda": _compiled}


def _run_iterative(spec: FitSpec, p: _Problem, backend: str, progress: bool):
    name, device = fit_backends.split(backend)
    q0, k0 = init_qk(spec.layers, spec.num_heads, spec.dim, spec.head_dim, p.generator)
    extra = {"renorm": spec.renorm, "lr": spec.lr}
    if spec.dedup or spec.tol is not None:
        q, k, info = fit_iterative_fast(p.x, p.targets, spec.head_dim, dedup=spec.dedup, tol=spec.tol,
                                        check_every=spec.check_every, backend=name, q0=q0, k0=k0, steps=spec.steps,
                                        lr=spec.lr, scale=spec.scale, renorm_every=spec.renorm_every,
                                        renorm=spec.renorm)
        extra.update(info.as_dict())
        return q, k, extra, int(info.steps_run.max())
    q, k = ITERATIVE_BACKENDS[name](spec, p, q0, k0, device, progress)
    return q, k, extra, spec.steps


# fit method -> function(spec, problem, backend, progress) -> (q, k, extra report fields, steps run)
RUNNERS: Dict[str, Callable] = {"closed_form": _run_closed_form, "iterative": _run_iterative}

def _typical(spec: FitSpec, pseudo_scale: float) -> list:
    """(argument, value, typical value) of the arguments that set the size of the logits and of the steps."""
    out = [("scale", spec.scale, 0.1)]
    if spec.fit_method == "iterative":
        out.append(("lr", spec.lr, 1e-4))
    else:
        if spec.logit_scale is not None:
            out.append(("logit_scale", spec.logit_scale, 1.0))
        if spec.noise_std > 0:
            out.append(("noise_std", spec.noise_std, 1.0))
        out.append(("pinv_rtol", spec.pinv_rtol, 0.03))
    if spec.pseudo_input is not None:
        out.append(("pseudo_input", pseudo_scale, 1.0))
    return out


def _check_finite(spec: FitSpec, q: torch.Tensor, k: torch.Tensor, used: str) -> None:
    """A fit whose Q or K holds NaN/Inf raises, naming the arguments furthest (in orders of magnitude) from their
    typical values: the likely cause."""
    if bool(torch.isfinite(q).all()) and bool(torch.isfinite(k).all()):
        return
    pseudo_scale = float(spec.pseudo_input.abs().max()) if spec.pseudo_input is not None else 1.0
    cands = [(abs(math.log10(max(v, 1e-300) / t)), name, v, t) for name, v, t in _typical(spec, pseudo_scale)]
    far = sorted([c for c in cands if c[0] >= 2], reverse=True) or cands
    named = ", ".join(f"{name}={v:.3g} (typical {t:g})" if name != "pseudo_input" else
                      f"pseudo_input (largest |value| {v:.3g}, typical 1)" for _, name, v, t in far)
    raise ValueError(f"the impulse fit (fit_method {spec.fit_method!r}, backend {used!r}) ended with non-finite Q, "
                     f"K (NaN or Inf); likely responsible: {named}. Bring {'it' if len(far) == 1 else 'them'} toward "
                     f"the typical value{'' if len(far) == 1 else 's'}")


def fit_impulse(num_heads: int, grid_size=(16, 16), kernel_size: int = 5, dim: int = 512, head_dim: int = 64,
                fit_method: str = "iterative", steps: int = 10000, seed: int = 0, backend: str = "auto", *,
                layers: int = 1, offsets=None, scale=0.1, lr: float = 1e-4, renorm_every: int = 100,
                renorm: str = "code", alpha: float = 0.0, pseudo_input: Optional[torch.Tensor] = None,
                target: str = "impulse", target_mass: float = 0.3, logit_scale: Optional[float] = None,
                pinv_rtol: float = 0.03, noise_std: float = 0.0, warn: bool = True, progress: bool = False,
                cache_dir=None, dedup: bool = False, tol: Optional[float] = None,
                check_every: int = 100) -> FitResult:
    """Fit Q, K so that softmax(scale · X Q Kᵀ Xᵀ) reproduces one random impulse (shift) map per head.

    Args:
        num_heads: heads per layer; each gets one offset from the k×k window.
        grid_size: token grid, an int or (H, W); N = H·W.
        kernel_size: odd window size k the offsets are drawn from (5 in the 2401.12511 code).
        dim: model width D; head_dim: the head dimension r (the rank of Q Kᵀ).
        fit_method: ``"iterative"`` (the published Adam recipe) or ``"closed_form"`` (projection + SVD).
        steps, lr, renorm_every, renorm: the iterative recipe (published defaults 10000, 1e-4, 100, "code";
            ``renorm="columns"`` rescales K's columns as the paper text says, the public code rescales K's rows).
        seed: seeds the offsets and, from a separate stream, the init; results are deterministic for a seed.
        backend: ``"auto"`` (the fastest available backend whose parity probe passes, falling back with a warning),
            ``"reference"`` (plain PyTorch autograd), ``"cpp"``/``"cuda"`` (the compiled fit). Closed form always
            runs in PyTorch.
        layers: independent fits (fresh offsets per layer) batched in one call.
        offsets: "random" (default: drawn from the seed, with replacement, fresh for every layer), "cycle" (head h
            takes window position h mod k² in every layer: with heads >= k² every offset is used, the 2505.19985
            code's choice), or explicit (heads, 2) / (layers, heads, 2) integer offsets.
        scale: the softmax scale s (0.1 in the published code; the model uses the same scale), or ``"auto"``:
            0.1 at the paper's size (D=512, r=64, 8 heads) and scaled by 512·r·heads/D² elsewhere, which keeps the
            logit budget of the published init (it grows like s·D²/(r·heads)) at every model size.
        alpha, pseudo_input: the query/key input is α·content + (1 − α)·X₀ with X₀ the pseudo-input (default: the
            2D sin-cos encoding; e.g. LN(P) for a standard ViT, I_N for free maps). The fit is made on
            X = (1 − α)·X₀, the part the layer really sees, and the report measures what the content term α·z
            (z standard normal, a stand-in for LN(x)) adds to the logits.
        target: the closed form's target logits around each head's offset, ``"impulse"`` (row match + column
            match) or ``"laplace"`` (minus the city-block distance to the target: a local blob), see
            ``targets.logit_target``.
        target_mass, logit_scale, pinv_rtol, noise_std: closed-form sharpness and conditioning (see
            ``fitting.closed_form``).
        warn: emit a RuntimeWarning when the fit is no better than a uniform map.
        cache_dir: a directory for a disk cache of fits keyed by a digest of the whole spec (see
            ``fitting.cache``); ``report.extra["cache"]`` says "hit", "miss" or why an entry was refitted.
        dedup, tol, check_every: a faster iterative fit that is NOT the published recipe (``fitting.fast``,
            labelled in ``report.extra["algorithm"]``): ``dedup=True`` fits each distinct target once and gives
            every head with that target the same Q, K; ``tol`` stops a head once its loss improved by less than
            ``tol`` (relative) over the last ``check_every`` steps. Off by default.
    Limits (each refused before any work, naming the argument): ``scale`` in [1e-8, 1e8] when given as a
    number, ``lr`` <= 1e3, ``logit_scale`` and ``noise_std`` <= 1e6 (see ``spec.SCALE_RANGE`` etc.); the memory the fit
    would hold (``IMPULSE_ATTN_MEMORY_BUDGET`` caps it); for the closed form, the work of its SVDs
    (``closed_form.MAX_CLOSED_FORM_WORK``: about a minute of CPU time; e.g. mode "III" on grids above about
    45×45). A fit that still ends with NaN/Inf in Q or K raises ValueError naming the likely arguments.
    Returns:
        FitResult with ``q``, ``k`` of shape (layers, heads, D, head_dim), ``offsets`` (layers, heads, 2) and
        ``report`` (mse, uniform_mse, argmax_hit, target_mass, content_logit_std, seconds, ...).
    """
    warn, progress = as_bool(warn, "warn"), as_bool(progress, "progress")
    if pseudo_input is not None:
        float_tensor(pseudo_input, "pseudo_input")
    spec = make_spec(num_heads, grid_size, kernel_size, dim, head_dim, fit_method, steps, seed, backend, layers=layers,
                     offsets=offsets, scale=scale, lr=lr, renorm_every=renorm_every, renorm=renorm, alpha=alpha,
                     pseudo_input=pseudo_input, target=target, target_mass=target_mass, logit_scale=logit_scale,
                     pinv_rtol=pinv_rtol, noise_std=noise_std, dedup=dedup, tol=tol, check_every=check_every)
    return run_fit(spec, warn=warn, progress=progress, cache_dir=cache_dir)


def run_fit(spec: FitSpec, *, warn: bool = True, progress: bool = False, cache_dir=None) -> FitResult:
    """Run the fit a validated ``spec`` (``make_spec``) describes: ``fit_impulse`` without validating again (the
    ``fit`` command validates first, to name its flags). The closed form's work limit and an explicitly asked
    backend that cannot run here are refused before any work."""
    fit_method, backend, seed = spec.fit_method, spec.backend, spec.seed
    if fit_method == "closed_form":
        check_closed_form_work(spec.tokens, spec.dim)
    else:
        fit_backends.check_available(backend)
    cache = FitCache(cache_dir) if cache_dir is not None else None
    problem = _Problem(spec)
    start = time.perf_counter()
    candidates = ["reference"] if fit_method == "closed_form" else fit_backends.candidates(backend)
    result = None
    for i, used in enumerate(candidates):
        try:
            result = _fit_or_load(spec, problem, used, cache, progress)
            break
        except RuntimeError as e:
            if backend != "auto" or i == len(candidates) - 1:
                raise
            fit_backends.disable(used, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            warnings.warn(f"impulse fit: backend {used!r} failed ({str(e).splitlines()[0][:200]}); falling back to "
                          f"{candidates[i + 1]!r}", RuntimeWarning, stacklevel=2)
    q, k, extra, steps_done, used = result
    seconds = time.perf_counter() - start
    report = evaluate_fit(problem.x, q, k, spec.scale, problem.targets, problem.valid, seconds, fit_method,
                          used, steps_done, alpha=spec.alpha, seed=seed)
    report.extra.update(extra)
    log.info("impulse fit: %s", report)
    if warn:
        warn_if_uniform(report)
    return FitResult(q=q.float(), k=k.float(), offsets=problem.offsets.clone(), scale=spec.scale, report=report)


def _fit_or_load(spec: FitSpec, problem: _Problem, used: str, cache: Optional[FitCache], progress: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, dict, int, str]:
    key = None
    if cache is not None:
        import impulse_attn
        key = cache_key({"package": impulse_attn.__version__, "torch": torch.__version__, "backend_used": used,
                         **spec.key_fields()})
        shape = (spec.layers, spec.num_heads, spec.dim, spec.head_dim)
        entry, status = cache.load(key, {"q": (shape, torch.float32), "k": (shape, torch.float32)})
        if status.startswith("corrupt"):
            log.warning("impulse fit cache: entry %s is %s; refitting", cache.path(key), status)
        if entry is not None:
            extra = {**entry["meta"].get("extra", {}), "cache": status}
            return (entry["tensors"]["q"], entry["tensors"]["k"], extra, int(entry["meta"].get("steps_done", 0)),
                    used)
    q, k, extra, steps_done = RUNNERS[spec.fit_method](spec, problem, used, progress)
    _check_finite(spec, q, k, used)
    if cache is not None:
        cache.store(key, {"q": q.float(), "k": k.float()}, {"extra": extra, "steps_done": steps_done})
        extra = {**extra, "cache": status}
    return q, k, extra, steps_done, used
