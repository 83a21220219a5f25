"""impulse_attn: convolutional (impulse) initialization of attention for data-efficient vision transformers.

Layers, lowest first; a module imports only from its own layer or lower ones (tests/test_architecture.py checks):

    _validate            argument checks shared by the public API
    filters, targets     filter banks; positional encodings and impulse targets
    fitting              fitting Q, K to impulse maps: reference, closed form, compiled fit, backend choice
    init                 init strategies and the protocol layers expose to them
    attention            the attention op (reference, SDPA, Triton) and the attention layers
    models, timm, families  SimpleViT, ConvMixer; the method on timm and Hugging Face models (one init_)
    analysis, plots      reading attention maps; pictures
    training             data, the loop, checkpoints, comparisons, inspection
    backends, cli, demo, __main__  what is available here; the `impulse-attn` command and its demo
"""
from .attention import ImpulseAttention, ViTAttention
from .backends import backends
from .families import InitReport, attention_maps, family_of, init_
from .filters import bank_report, conv_as_attention, filter_bank
from .fitting import FitReport, FitResult, FitSpec, fit_impulse
from .init import INIT_STRATEGIES, initialize_qk_
from .models import ConvMixer, SimpleViT
from .targets import draw_offsets, impulse_targets, sincos_2d

__version__ = "0.2.0"

__all__ = ["init_", "attention_maps", "family_of", "InitReport", "ImpulseAttention", "ViTAttention", "SimpleViT", "ConvMixer", "fit_impulse", "FitSpec", "FitResult",
           "FitReport", "INIT_STRATEGIES", "initialize_qk_", "filter_bank", "conv_as_attention", "bank_report",
           "sincos_2d", "impulse_targets", "draw_offsets", "backends", "__version__"]
