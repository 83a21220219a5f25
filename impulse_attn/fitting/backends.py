"""Which backend runs the iterative fit, and why not the others.

"reference" (PyTorch autograd; on the GPU when there is one) always works. "cpp" and "cuda" are the compiled
fit (``impulse_attn._C``). ``backend="auto"`` takes them in the order cuda, cpp, reference, skipping any that is
not built, has no device, or failed its parity probe: the first time a compiled backend is considered in a
process, a small fit runs through it and through the float64 reduced-basis reference, and a mismatch disables
it for the rest of the process (with one warning that names the cause). A backend that raised during a fit is
disabled the same way. An explicitly requested backend is never probed or replaced: it runs or raises.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch

COMPILED = ("cuda", "cpp")
_disabled: Dict[str, str] = {}
_probe_results: Dict[str, Optional[str]] = {}


def split(backend: str) -> Tuple[str, str]:
    """(backend name, device it runs on)."""
    if backend == "cuda":
        return "cuda", "cuda"
    if backend == "cpp":
        return "cpp", "cpu"
    return "reference", "cuda" if torch.cuda.is_available() else "cpu"


def _compiled_reason(name: str) -> Optional[str]:
    from . import compiled as fit_ext
    ok, why = fit_ext.available(split(name)[1])
    return None if ok else why


def _probe(name: str) -> Optional[str]:
    """Run a small fit through the compiled backend and through the float64 reference; None when they agree.

    Error model: float32 iterates after a few Adam steps differ from float64 ones by rounding amplified at most
    by the step count; 1e-3 of the largest weight is far above that (observed ~1e-6) and far below what any
    indexing or math error produces (O(1) of the weights)."""
    from . import compiled as fit_ext
    from . import reduced
    from ..targets import impulse_targets
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([[0, 1], [-1, 0], [1, 1]])
    t = impulse_targets(offsets, (5, 4)).reshape(1, 3, 20, 20)
    x = torch.randn(20, 24, generator=g, dtype=torch.float64)
    q0 = torch.rand(1, 3, 24, 8, generator=g, dtype=torch.float64) - 0.5
    k0 = torch.rand(1, 3, 24, 8, generator=g, dtype=torch.float64) - 0.5
    kw = dict(steps=6, lr=1e-2, scale=0.5, renorm_every=4, renorm="code")
    try:
        q, k = fit_ext.fit_iterative(x.float(), t.float(), 8, device=split(name)[1], q0=q0.float(), k0=k0.float(),
                                     **kw)
    except Exception as e:  # a launch or build problem is a reason not to use it
        return f"parity probe raised {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    qr, kr = reduced.fit_iterative_factored(x, t.double(), 8, q0=q0, k0=k0, **kw)
    err = max(float((q.double() - qr).abs().max()), float((k.double() - kr).abs().max()))
    bound = 1e-3 * max(float(qr.abs().max()), float(kr.abs().max()))
    if not err <= bound:
        return f"parity probe: the compiled fit differs from the reference by {err:.3g} (bound {bound:.3g})"
    return None


def unavailable_reason(name: str, probe: bool = True) -> Optional[str]:
    """None when backend ``name`` can run here (and, with ``probe``, passed its parity probe), else why not."""
    if name == "reference":
        return None
    if name not in COMPILED:
        raise ValueError(f"unknown fit backend {name!r}")
    if name in _disabled:
        return _disabled[name]
    why = _compiled_reason(name)
    if why is not None or not probe:
        return why
    if name not in _probe_results:
        _probe_results[name] = _probe(name)
        if _probe_results[name] is not None:
            warnings.warn(f"impulse fit: backend {name!r} is disabled for this process: {_probe_results[name]}",
                          RuntimeWarning, stacklevel=3)
    return _probe_results[name]


def disable(name: str, why: str) -> None:
    """Take ``name`` out of "auto" for the rest of the process (after it failed)."""
    if name != "reference":
        _disabled[name] = why


def check_available(requested: str) -> None:
    """Refuse (ValueError, before any work) an explicitly requested compiled backend that cannot run here, e.g.
    ``"cuda"`` without a GPU or without the CUDA build of the extension."""
    if requested in COMPILED:
        why = unavailable_reason(requested, probe=False)
        if why is not None:
            raise ValueError(f"backend {requested!r} cannot run here: {why}; use backend='auto' (the fastest that "
                             f"runs here) or 'reference'")


def candidates(requested: str) -> List[str]:
    """The backends to try, in order, for a requested one. An explicit compiled backend that cannot run here is
    a RuntimeError that says why."""
    if requested == "auto":
        return [name for name in COMPILED if unavailable_reason(name) is None] + ["reference"]
    if requested != "reference":
        why = unavailable_reason(requested, probe=False)
        if why is not None:
            raise RuntimeError(f"fit backend {requested!r} is not available: {why}")
    return [requested]


def reset() -> None:
    """Forget probe results and disabled backends (tests)."""
    _disabled.clear()
    _probe_results.clear()
