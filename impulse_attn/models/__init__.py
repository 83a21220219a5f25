"""Models: the Simple ViT backbone and ConvMixer."""
from .convmixer import FILTER_INITS, ConvMixer
from .simple_vit import ATTENTIONS, SimpleViT

__all__ = ["SimpleViT", "ConvMixer", "ATTENTIONS", "FILTER_INITS"]
