"""Attention: the backend switch and the layers the init strategies act on."""
from .functional import ATTENTION_BACKENDS, attention, reference_attention, shared_map_attention
from .module import MODES, ImpulseAttention, ViTAttention

__all__ = ["attention", "reference_attention", "shared_map_attention", "ATTENTION_BACKENDS", "ImpulseAttention",
           "ViTAttention", "MODES"]
