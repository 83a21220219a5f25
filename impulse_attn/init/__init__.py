"""Init strategies for attention query/key weights."""
from .strategies import INIT_STRATEGIES, initialize_qk_, mimetic_qk, random_qk

__all__ = ["INIT_STRATEGIES", "initialize_qk_", "random_qk", "mimetic_qk"]
