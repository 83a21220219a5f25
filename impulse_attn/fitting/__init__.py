"""Fitting query/key weights so that each head's attention map reproduces an impulse filter."""
from .api import FIT_BACKENDS, METHODS, fit_impulse
from .report import FitReport, FitResult, attention_maps

__all__ = ["fit_impulse", "FitResult", "FitReport", "attention_maps", "METHODS", "FIT_BACKENDS"]
