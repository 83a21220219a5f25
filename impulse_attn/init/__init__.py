"""Init strategies for attention query/key weights, and the protocol layers expose to them."""
from .protocol import QKLayer, QKRequest
from .strategies import CLOSED_FORM_DEFAULTS, INIT_STRATEGIES, STRATEGIES, default_scale, initialize_qk_, mimetic_qk, random_qk

__all__ = ["CLOSED_FORM_DEFAULTS", "INIT_STRATEGIES", "STRATEGIES", "initialize_qk_", "random_qk", "mimetic_qk", "default_scale",
           "QKLayer", "QKRequest"]
