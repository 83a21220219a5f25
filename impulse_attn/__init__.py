"""impulse_attn: convolutional (impulse) initialization of attention for data-efficient vision transformers.

Flow of the package: filters and targets -> fitting -> init strategies -> attention -> models -> training.
"""
from .attention import ImpulseAttention, ViTAttention, attention
from .backends import backends
from .filters import bank_report, conv_as_attention, filter_bank
from .fitting import FitReport, FitResult, fit_impulse
from .init import INIT_STRATEGIES, initialize_qk_
from .models import ConvMixer, SimpleViT
from .targets import draw_offsets, impulse_targets, sincos_2d

__version__ = "0.1.0"

__all__ = ["ImpulseAttention", "ViTAttention", "attention", "SimpleViT", "ConvMixer", "fit_impulse", "FitResult",
           "FitReport", "INIT_STRATEGIES", "initialize_qk_", "filter_bank", "conv_as_attention", "bank_report",
           "sincos_2d", "impulse_targets", "draw_offsets", "backends", "__version__"]
