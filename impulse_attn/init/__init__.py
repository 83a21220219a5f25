"""Init strategies (a registry, one file per strategy in ``strategies/``) and the protocols layers expose to them."""
from .apply import default_scale, initialize_qk_
from .protocol import (QKLayer, QKRequest, TokenMixLayer, TokenMixRequest, ViTLayers, ViTPlan, ViTRequest,
                       VProjLayer, WindowBiasLayer, WindowRequest)
from .registry import (INIT_STRATEGIES, LAYER_KINDS, STRATEGIES, Strategy, get_strategy, register_strategy,
                       unregister_strategy)
from . import strategies  # noqa: F401  (registers the built-ins and every strategy file)
from .strategies.mimetic import mimetic_qk
from .strategies.random import random_qk
from .value import VALUE_INITS, initialize_vproj_, mimetic_vproj

__all__ = ["INIT_STRATEGIES", "STRATEGIES",
           "LAYER_KINDS", "Strategy", "register_strategy", "unregister_strategy", "get_strategy", "VALUE_INITS",
           "initialize_qk_", "initialize_vproj_", "random_qk", "mimetic_qk", "mimetic_vproj", "default_scale",
           "QKLayer", "QKRequest", "VProjLayer", "WindowBiasLayer", "WindowRequest", "TokenMixLayer",
           "TokenMixRequest", "ViTLayers", "ViTRequest", "ViTPlan"]
