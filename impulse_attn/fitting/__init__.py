"""Fitting query/key weights so that each head's attention map reproduces an impulse filter.

``fit_impulse`` (api.py) validates its arguments into a ``FitSpec`` (spec.py) and dispatches to the closed form
(closed_form.py) or the published iterative recipe: the autograd reference (iterative.py), its reduced-basis
PyTorch twin (reduced.py) and the compiled kernels; backends.py says which can run here.
"""
from .api import fit_impulse
from .report import FitReport, FitResult, attention_maps
from .spec import FIT_BACKENDS, FIT_METHODS, RENORM_MODES, FitSpec, resolve_scale

__all__ = ["fit_impulse", "FitSpec", "FitResult", "FitReport", "attention_maps", "FIT_METHODS", "FIT_BACKENDS",
           "RENORM_MODES", "resolve_scale"]
