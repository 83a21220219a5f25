"""How the command line names a family's models (``--model``) and builds them from its flags: the family's
``ModelSource``. The training code loops over the registered families through ``family_for_spec`` and never names
one: a family file that registers a source is reachable as ``--model <spec>`` or ``--model <prefix>:<name>``.

A source says which of the run's flags it reads (``flags``, the rest of the model flags are refused for it), which
model keyword each one sets (``keywords``: a ``--model-kwargs`` entry that sets the same keyword differently is
refused), its model-dependent defaults, how to build the model, and which module ``init_`` and the maps see
(``unwrap``). Which init settings reach a strategy is the strategy's to say (``Strategy.settings``, per layer kind).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

#: The keywords every builder gets from the data, not from a flag: the classes, the image side, the channels.
DATA_KEYWORDS = ("num_classes", "image_size", "channels")


@dataclass(frozen=True)
class BuildRequest:
    """What the command line gives a family's builder: ``name`` after the prefix ("" for the package's own models),
    ``flags`` the flags of ``ModelSource.flags`` that were given (field -> value), ``model_kwargs`` (parsed
    ``--model-kwargs``), the data's ``num_classes``, ``image_size`` and ``channels``, and the resolved ``config``
    (the package's own models read all their fields from it)."""

    name: str
    flags: Dict[str, Any]
    model_kwargs: Dict[str, Any]
    num_classes: int
    image_size: int
    channels: int
    config: Any = None
    #: for sources that take the init at construction (``ModelSource.inits_itself``): the strategy's settings from
    #: the command line, and whether to apply it at all (ranks other than 0 under torchrun receive the weights)
    init_settings: Dict[str, Any] = field(default_factory=dict)
    qk_init: bool = True


def _identity(model):
    return model


@dataclass(frozen=True)
class ModelSource:
    """spec: the ``--model`` value ("vit") or prefix ("timm" in "timm:<name>", when ``prefixed``);
    claims(name): whether this family builds the prefixed ``name``; explain(name): why no family of the prefix
    does (one line, naming what to use); flags: the TrainConfig fields it reads; keywords: flag or data keyword
    (``DATA_KEYWORDS``) -> the model keyword it sets; defaults: the config's defaults for this model; build(request)
    -> model; unwrap(model) -> the module the init and the maps see;
    inits_itself: the builder applies the run's init (the package's own models take it at construction);
    check(request): refusals before any work; parameters(config): the blocks' parameter count (memory check);
    describe: one line for ``--model``'s help; examples: names for messages."""

    spec: str
    build: Callable[[BuildRequest], torch.nn.Module]
    prefixed: bool = False
    claims: Callable[[str], bool] = lambda name: True
    explain: Callable[[str], str] = lambda name: ""
    flags: Tuple[str, ...] = ()
    keywords: Dict[str, str] = field(default_factory=dict)
    defaults: Dict[str, Any] = field(default_factory=dict)
    unwrap: Callable[[torch.nn.Module], torch.nn.Module] = _identity
    inits_itself: bool = False
    check: Optional[Callable[[BuildRequest], None]] = None
    parameters: Optional[Callable[[Any], Optional[int]]] = None
    describe: str = ""
    examples: Tuple[str, ...] = ()

    def model_value(self, name: str = "") -> str:
        return f"{self.spec}:{name or '<name>'}" if self.prefixed else self.spec


def given_keywords(source: ModelSource, request: BuildRequest) -> dict:
    """The model keywords the flags and the data set, checked against ``--model-kwargs``: a keyword both set to
    different values is refused in one line (naming the flag), before anything is built. Data keywords
    (``num_classes`` ...) must agree with the data."""
    out: dict = {}
    data = {"num_classes": request.num_classes, "image_size": request.image_size, "channels": request.channels}
    for name, value in [*request.flags.items(), *data.items()]:
        key = source.keywords.get(name)
        if key is None or value is None:          # (a data size is None before the data is read)
            continue
        if key in request.model_kwargs and request.model_kwargs[key] != value:
            where = (f"--{name.replace('_', '-')} {value}" if name not in data else
                     f"the data's {name.replace('_', ' ')} {value}")
            raise ValueError(f"--model-kwargs sets {key}={request.model_kwargs[key]!r} but {where} sets "
                             f"{key}={value!r}: give it once")
        out[key] = value
    return out
