"""Init strategies for attention query/key weights, and the protocol layers expose to them."""
from .protocol import QKLayer, QKRequest, VProjLayer
from .strategies import (CLOSED_FORM_DEFAULTS, INIT_STRATEGIES, STRATEGIES, VALUE_INITS, default_scale,
                         initialize_qk_, initialize_vproj_, mimetic_qk, mimetic_vproj, random_qk)

__all__ = ["CLOSED_FORM_DEFAULTS", "INIT_STRATEGIES", "STRATEGIES", "VALUE_INITS", "initialize_qk_",
           "initialize_vproj_", "random_qk", "mimetic_qk", "mimetic_vproj", "default_scale", "QKLayer", "QKRequest",
           "VProjLayer"]
