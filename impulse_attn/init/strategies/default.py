"""default: leave every weight as the model built it (PyTorch's init for this package's models, timm's or
Hugging Face's own init for theirs)."""
from ..registry import Strategy, register_strategy

STRATEGY = register_strategy(Strategy(
    "default", "leave the model's own init (PyTorch's for vit/convmixer, timm's or Hugging Face's for theirs)",
    keeps_model=True))
