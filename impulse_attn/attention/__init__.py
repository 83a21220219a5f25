"""Attention: the functional op (reference beside its fast paths, backend choice next to it) and the layers the
init strategies act on."""
from .backends import ATTENTION_BACKENDS
from .functional import attention, attention_probs, reference_attention, shared_map_attention
from .layers import FIT_DEFAULTS, MODES, ImpulseAttention, QKAttention, ViTAttention

__all__ = ["attention", "reference_attention", "shared_map_attention", "attention_probs", "ATTENTION_BACKENDS",
           "ImpulseAttention", "ViTAttention", "QKAttention", "MODES", "FIT_DEFAULTS"]
