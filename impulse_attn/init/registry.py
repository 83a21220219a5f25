"""The init-strategy registry: one ``Strategy`` per name, each saying what it does to each kind of layer.

A model family (``impulse_attn.families``) exposes its layers through the protocols of ``init.protocol``: a standard
ViT as a whole (``ViTLayers``: timm, Hugging Face and torchvision ViTs, position embedding and every block), query/key
layers (``QKLayer``: Simple ViT, standard ViTs' blocks, Swin's window attention), window position biases
(``WindowBiasLayer``: Swin's relative position bias tables) and token-mixing MLPs (``TokenMixLayer``: MLP-Mixer).
A strategy is a set of handlers, one per layer kind it can set; a family asks for the handlers its layers need and
refuses, in one line, a strategy that lacks one. So a new strategy is one file in ``init/strategies/`` (or one
``register_strategy`` call in user code) and reaches every family whose layer kinds it handles, and the
command line's ``--init`` choices.

Handler signatures (all in place, through the protocol's loaders only):

- ``vit(layers, generator, *, seed, fit_method, kernel_size, fit_kwargs, options) -> ViTPlan`` (``generator``
  None and ``seed`` None: the global torch and numpy generators, as the structured-init paper's code)
- ``qk(layers, requests, generator, *, seed, fit_method, kernel_size, fit_kwargs) -> results or None``
- ``window_bias(layers, requests, generator, *, seed, kernel_size, options) -> list of per-layer reports``
- ``token_mix(layers, requests, generator, *, seed, kernel_size, options) -> list of per-layer reports``
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .._validate import choice

LAYER_KINDS = ("vit", "qk", "window_bias", "token_mix")


@dataclass(frozen=True)
class Strategy:
    """name: the ``--init`` value; summary: one line for ``--help``; one handler per layer kind it can set (None:
    it does not apply to that kind); needs_pseudo_input: its qk handler reads ``QKRequest.pseudo_input`` (built
    only then); keeps_model: it leaves every weight as the model built it (the family's own init); fit_methods:
    the ``fit_method`` values it takes (empty: none, it is its own fit); settings: per layer kind, the names of the
    settings that kind's handler takes (``fit_kwargs`` and options, and "fit_method" where it reads one): what the
    command line passes it there, and nothing else."""

    name: str
    summary: str
    vit: Optional[Callable] = None
    qk: Optional[Callable] = None
    window_bias: Optional[Callable] = None
    token_mix: Optional[Callable] = None
    needs_pseudo_input: bool = False
    keeps_model: bool = False
    fit_methods: Tuple[str, ...] = ()
    settings: Optional[Dict[str, Tuple[str, ...]]] = None

    def takes(self, setting: str, kind: str) -> bool:
        """Whether ``setting`` (a fit_kwargs or option name, or "fit_method") reaches this strategy's handler of
        layer ``kind``."""
        return setting in (self.settings or {}).get(kind, ())

    def check_fit_method(self, fit_method: Optional[str]) -> Optional[str]:
        """``fit_method`` when this strategy takes it (None: its first), or a ValueError of one line."""
        if fit_method is None:
            return self.fit_methods[0] if self.fit_methods else None
        if fit_method not in self.fit_methods:
            takes = (f"takes fit_method {' or '.join(map(repr, self.fit_methods))}" if self.fit_methods else
                     "is its own fit and takes no fit_method")
            raise ValueError(f"init {self.name!r} {takes}, got fit_method={fit_method!r}")
        return fit_method

    def handler(self, kind: str) -> Optional[Callable]:
        choice(kind, "kind", LAYER_KINDS)
        return getattr(self, kind)


_REGISTRY: Dict[str, Strategy] = {}


def register_strategy(strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Add ``strategy`` to the registry (what ``init_``, the layers and ``--init`` accept). A name already taken is
    refused unless ``replace``."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be an impulse_attn.init.Strategy, got {type(strategy).__name__}")
    if not isinstance(strategy.name, str) or not strategy.name.isidentifier():
        raise ValueError(f"strategy name must be an identifier-like string, got {strategy.name!r}")
    if not (strategy.keeps_model or any(strategy.handler(k) for k in LAYER_KINDS)):
        raise ValueError(f"strategy {strategy.name!r} has no handler for any layer kind ({', '.join(LAYER_KINDS)})")
    if strategy.name in _REGISTRY and not replace:
        raise ValueError(f"an init strategy named {strategy.name!r} is already registered (pass replace=True)")
    _REGISTRY[strategy.name] = strategy
    return strategy


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (tests, plugins)."""
    choice(name, "init", tuple(_REGISTRY))
    del _REGISTRY[name]


def get_strategy(name: str) -> Strategy:
    choice(name, "init", tuple(_REGISTRY))
    return _REGISTRY[name]


class _Names(Sequence):
    """The registered names, read live: a strategy registered later is in every check and ``--init`` choice."""

    def __getitem__(self, i):
        return tuple(_REGISTRY)[i]

    def __len__(self):
        return len(_REGISTRY)

    def __contains__(self, name):
        return name in _REGISTRY

    def __eq__(self, other):
        return tuple(self) == tuple(other)

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return repr(tuple(self))


#: name -> Strategy (read-only view), and the names, both live.
STRATEGIES = _REGISTRY
INIT_STRATEGIES = _Names()
