"""What a fit produced and how good it is, measured the same way for every fit method and backend."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import torch

from ..targets import target_quality


@dataclass
class FitReport:
    """Quality of fitted attention maps against their impulse targets (all heads and layers pooled).

    mse:             mean squared error between softmax maps and targets (the fit's loss)
    uniform_mse:     the same error for a uniform map (every row 1/N): what a fit that learned nothing gets
    argmax_hit:      fraction of valid rows (shift inside the grid) whose argmax is the target token
    target_mass:     mean attention weight on the target token over valid rows (1.0 = hard impulse)
    seconds:         wall-clock time of the fit
    max_logit:       largest |logit| of the fitted maps on the pseudo-input
    content_logit_std: std of the logits that a unit-variance random input (a stand-in for α·LN(x)) produces
                     through Q, K: large values mean Model I's content term will swamp the fitted map
    """

    mse: float
    uniform_mse: float
    argmax_hit: float
    target_mass: float
    seconds: float
    max_logit: float = float("nan")
    content_logit_std: float = float("nan")
    fit_method: str = ""
    backend: str = ""
    steps: int = 0
    extra: dict = field(default_factory=dict)

    tokens: int = 0

    @property
    def better_than_uniform(self) -> bool:
        # A map that learned the shift either peaks on the target in most rows, or puts several times the uniform
        # weight 1/N on it and is below the uniform map's error (1% below it is far too little). A soft, local map
        # may give a neighbour as much weight as the target, so the second test does not ask for the argmax; and a
        # soft map that does peak on the target (the closed form at a low mass on a small grid) passes the first.
        uniform_mass = 1.0 / self.tokens if self.tokens else 0.0
        return self.argmax_hit >= 0.5 or (self.mse < 0.99 * self.uniform_mse and self.target_mass > 3 * uniform_mass)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["better_than_uniform"] = self.better_than_uniform
        return d

    def __str__(self) -> str:
        content = ("no content term" if math.isnan(self.content_logit_std)   # α = 0: the logits ignore x
                   else f"content logit std {self.content_logit_std:.2f}")
        return (f"{self.fit_method}/{self.backend}: mse {self.mse:.5f} (uniform {self.uniform_mse:.5f}), "
                f"argmax hit {self.argmax_hit:.3f}, target mass {self.target_mass:.3f}, "
                f"max logit {self.max_logit:.1f}, {content}, {self.seconds:.2f} s")


@dataclass
class FitResult:
    """Fitted query/key weights. ``q``, ``k``: (heads, D, r), or (layers, heads, D, r) when layers > 1.

    The map of head h is ``softmax(scale · X q[h] k[h]ᵀ Xᵀ)`` with X the pseudo-input (N, D) used for the fit.
    """

    q: torch.Tensor
    k: torch.Tensor
    offsets: torch.Tensor
    scale: float
    report: FitReport


@torch.no_grad()
def attention_maps(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · X Q Kᵀ Xᵀ) for stacked heads: q, k (..., D, r), x (N, D) -> (..., N, N)."""
    return torch.softmax(scale * (x @ q) @ (x @ k).transpose(-1, -2), dim=-1)


@torch.no_grad()
def evaluate_fit(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, targets: torch.Tensor,
                 valid: torch.Tensor, seconds: float, fit_method: str, backend: str, steps: int,
                 alpha: float = 0.0, seed: int = 0) -> FitReport:
    """Measure a fit. ``targets`` (..., N, N) and ``valid`` (..., N) broadcast like q's leading dims; ``alpha``:
    Model I's content weight α (0: no content term), the scale of the random content whose logits are measured."""
    x = x.to(torch.float64)
    q = q.to(torch.float64)
    k = k.to(torch.float64)
    logits = scale * (x @ q) @ (x @ k).transpose(-1, -2)
    maps = torch.softmax(logits, dim=-1)
    targets = targets.to(torch.float64)
    n = maps.shape[-1]
    mse = float(((maps - targets) ** 2).mean())
    uniform_mse = float(((1.0 / n - targets) ** 2).mean())
    quality = target_quality(maps, targets.argmax(-1), valid)
    content_std = float("nan")
    if alpha > 0:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, x.shape[-1], generator=g, dtype=torch.float64) * alpha
        content_std = float((scale * (z @ q) @ (z @ k).transpose(-1, -2)).std())
    return FitReport(mse=mse, uniform_mse=uniform_mse, tokens=n, argmax_hit=quality["argmax_hit"],
                     target_mass=quality["target_mass"], seconds=seconds,
                     max_logit=float(logits.abs().max()), content_logit_std=content_std, fit_method=fit_method,
                     backend=backend, steps=steps)


def warn_if_uniform(report: FitReport) -> None:
    if not report.better_than_uniform:
        fix = ("use fit_method='closed_form', more steps, or a larger scale" if report.fit_method == "iterative" else
               "use a larger target_mass or logit_scale")
        warnings.warn(
            f"impulse fit is no better than a uniform attention map (argmax on the target in {report.argmax_hit:.0%} "
            f"of the rows, mse {report.mse:.5f} vs uniform {report.uniform_mse:.5f}, mass on the target "
            f"{report.target_mass:.3f} vs uniform {1 / max(report.tokens, 1):.3f}): the model gets no convolutional "
            f"prior; {fix}", RuntimeWarning, stacklevel=3)


def finite_or_raise(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"{what} produced NaN/Inf values")

