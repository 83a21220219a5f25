"""A model family: how to recognise its models, which layer kinds it exposes to the init strategies, how to apply
a strategy, and how to read its attention (or token-mixing) maps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from typing import TYPE_CHECKING

from .._validate import model_input
from ..init.registry import LAYER_KINDS, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from .source import ModelSource


@dataclass
class InitReport:
    """What ``impulse_attn.init_`` did. layers: per layer (block), a dict of what was set and how impulse-like the
    result is (``offsets`` (heads, 2) where the strategy has them, ``argmax_hit``/``target_mass`` where measured);
    source: the family's own report (e.g. a ``TimmInitReport`` or the Simple ViT's fit results)."""

    family: str
    init: str                      # the init strategy's name
    seed: int
    kind: str                      # the layer kind the strategy acted on ("qk", "window_bias", "token_mix", "")
    seconds: float
    layers: List[dict] = field(default_factory=list)
    source: object = None
    notes: List[str] = field(default_factory=list)
    #: per layer, the prior on the images given to ``init_`` (``families.on_data``): argmax_hit, target_mass
    #: (where the init has offsets) and position_share (query/key families) or bias_share (Swin); empty without
    #: images
    data: List[dict] = field(default_factory=list)
    images: int = 0                # how many images ``data`` was measured on

    @property
    def offsets(self) -> List[Optional[torch.Tensor]]:
        return [layer.get("offsets") for layer in self.layers]

    def _mean(self, key: str) -> float:
        vals = [layer[key] for layer in self.layers if layer.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    argmax_hit = property(lambda self: self._mean("argmax_hit"))
    target_mass = property(lambda self: self._mean("target_mass"))

    @property
    def on_data(self) -> dict:
        """The layers' mean of each on-data figure (None where not measured)."""
        from .on_data import summary
        return summary(self.data)

    def __str__(self) -> str:
        head = (f"{self.init} init of a {self.family} ({self.kind or 'nothing changed'}), seed {self.seed}: "
                f"{len(self.layers)} layers, {self.seconds:.2f} s")
        lines = [head, *self.notes]
        if self.data:
            from .on_data import describe
            lines.append(f"on {self.images} images: {describe(self.data)} (per layer: 'data' columns)")
        for i, layer in enumerate(self.layers):
            parts = [f"layer {i:2d}"]
            if layer.get("offsets") is not None:
                parts.append(f"offsets {layer['offsets'].tolist()}")
            for key in ("argmax_hit", "target_mass"):
                if layer.get(key) is not None:
                    parts.append(f"{key} {layer[key]:.3f}")
            data = self.data[i] if i < len(self.data) else {}
            for key in ("argmax_hit", "target_mass", "position_share", "bias_share"):
                if data.get(key) is not None:
                    parts.append(f"data {key} {data[key]:.3f}")
            lines.append("  ".join(parts))
        return "\n".join(lines)


@dataclass
class Probe:
    """How to read a model's maps for ``impulse-attn inspect``: its token grid, the impulse offsets per layer (None
    where unknown), ``maps(images)``: per layer (B, heads, N, N) over the grid tokens, ``pseudo()``: the same with no
    content (B = 1), and the family's name."""
    grid: Tuple[int, int]
    offsets: List[Optional[torch.Tensor]]
    maps: Callable[[torch.Tensor], List[torch.Tensor]]
    pseudo: Callable[[], List[torch.Tensor]]
    family: str


@dataclass(frozen=True)
class Family:
    """name: the registry key; label: for messages; matches(model); kinds: the layer kinds it can expose, in the
    order it prefers them; apply(model, strategy, kind, **settings) -> InitReport; maps(model, images) -> per
    layer (B, heads, N, N) maps on its token grid."""

    name: str
    label: str
    matches: Callable[[torch.nn.Module], bool]
    kinds: Tuple[str, ...]
    apply: Callable[..., InitReport]
    maps: Callable[..., List[torch.Tensor]]
    pseudo_input: bool = True        # its query/key layers have a positional pseudo-input (Swin's have none)
    #: on_data(model, images, offsets) -> per layer the prior on those images (``families.on_data``)
    on_data: Optional[Callable[..., List[dict]]] = None
    #: input_shape(model) -> (channels, height, width) of the images its forward takes
    input_shape: Optional[Callable[[torch.nn.Module], Tuple[int, int, int]]] = None
    #: how ``--model`` names and builds its models (``families.source``); None: reachable from Python only
    source: Optional["ModelSource"] = None
    #: probe(model, offsets) -> Probe: the maps ``impulse-attn inspect`` reads (default: every layer's, on the
    #: model's token grid, from ``maps``); None with ``maps`` None: no maps to inspect
    probe: Optional[Callable[..., "Probe"]] = None
    #: the init settings of its layers' defaults (``FIT_DEFAULTS`` of the family's file), for --help and docs
    fit_defaults: Optional[dict] = None

    def probe_of(self, model: torch.nn.Module, offsets=None) -> "Probe":
        """What ``inspect`` reads: this family's own probe, or every layer of ``maps`` on ``grid_of(model)``."""
        if self.probe is not None:
            return self.probe(model, offsets)
        if self.maps is None or self.grid_of is None:
            raise ValueError(f"a {self.label} has no attention or token-mixing maps to inspect")
        maps = self.maps
        n = len(maps(model)) if offsets is None else len(offsets)
        offsets = list(offsets) if offsets is not None else [None] * n
        return Probe(self.grid_of(model), [None if o is None else torch.as_tensor(o) for o in offsets],
                     lambda x: maps(model, x), lambda: maps(model), self.name)

    grid_of: Optional[Callable[[torch.nn.Module], Tuple[int, int]]] = None

    def check_images(self, model: torch.nn.Module, images, name: str = "images") -> torch.Tensor:
        """``images`` as this model's forward takes them, or a ValueError/TypeError of one line naming what is
        wrong (before any work)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a (batch, channels, height, width) tensor, got {type(images).__name__}")
        param = next(model.parameters(), None)
        if param is not None:
            model_input(images, name, param)
        want = self.input_shape(model) if self.input_shape is not None else None
        if images.dim() != 4 or images.shape[0] < 1 or (want is not None and tuple(images.shape[1:]) != want):
            shape = "(batch >= 1, " + (", ".join(map(str, want)) if want is not None else "C, H, W") + ")"
            raise ValueError(f"{name} must have shape {shape} for this {self.label}, got {tuple(images.shape)}")
        return images

    def kind_for(self, strategy: Strategy) -> str:
        """The layer kind ``strategy`` acts on here ("" for a strategy that keeps the model), or a ValueError of
        one line naming what the family has and what the strategy sets."""
        if strategy.keeps_model:
            return ""
        for kind in self.kinds:
            if strategy.handler(kind) is None:
                continue
            if kind == "qk" and strategy.needs_pseudo_input and not self.pseudo_input:
                continue
            return kind
        has = [k for k in LAYER_KINDS if strategy.handler(k) is not None]
        why = (" (its query/key handler needs a positional pseudo-input, which this model has not)"
               if "qk" in has and "qk" in self.kinds else "")
        exposes = ", ".join(self.kinds) or "no layer an init strategy sets"
        raise ValueError(f"init {strategy.name!r} does not apply to a {self.label}: it sets "
                         f"{', '.join(has) or 'nothing'}, a {self.label} exposes {exposes}{why}")


_FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a registered family (tests, plugins)."""
    if name not in _FAMILIES:
        raise ValueError(f"no family named {name!r} is registered")
    del _FAMILIES[name]


def families() -> Tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def family_for_spec(spec) -> Tuple[Family, str]:
    """The family that builds ``--model spec`` and the model name after the prefix ("" for the package's own), or
    a ValueError of one line saying what the families take."""
    from .source import ModelSource  # noqa: F401  (the type of Family.source)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--model must name a model, got {spec!r}")
    prefix, sep, name = (part.strip() for part in spec.partition(":"))
    sources = [f for f in _FAMILIES.values() if f.source is not None]
    if not sep:
        for fam in sources:
            if not fam.source.prefixed and fam.source.spec == prefix:
                return fam, ""
    else:
        candidates = [f for f in sources if f.source.prefixed and f.source.spec == prefix]
        if candidates and name:
            for fam in candidates:
                if fam.source.claims(name):
                    return fam, name
            raise ValueError(candidates[0].source.explain(name) or f"no family builds --model {spec}")
    raise ValueError(f"--model must be one of {', '.join(model_values())}, got {spec!r}")


def model_values() -> List[str]:
    """Every ``--model`` form the registered families build (``vit``, ``timm:<name>``, ...), in registry order."""
    out: List[str] = []
    for fam in _FAMILIES.values():
        if fam.source is not None and fam.source.model_value() not in out:
            out.append(fam.source.model_value())
    return out


def family_of(model) -> Family:
    """The family of ``model``, or a TypeError naming the supported ones."""
    for fam in _FAMILIES.values():
        if fam.matches(model):
            return fam
    raise TypeError(f"no init family knows a {type(model).__module__}.{type(model).__name__}; supported: "
                    f"{', '.join(f.label for f in _FAMILIES.values())}")


class _Captured(Exception):
    """Raised by the last capture hook to end a forward pass whose remaining layers nobody reads."""


@torch.no_grad()
def capture_inputs(model: torch.nn.Module, modules, run: Callable, images: torch.Tensor,
                   read: Callable = lambda args, kwargs: args[0].detach(), stop: bool = False) -> list:
    """Run ``run(images)`` in eval mode (restored afterwards) and return, per module of ``modules`` in call order,
    ``read(args, kwargs)`` of its input: how the families read the tokens their layers see. ``stop``: end the
    forward pass once every module has been reached (``modules`` are called once each, in order)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    param = next(model.parameters(), None)
    if param is not None:
        model_input(images, "images", param)
    modules = list(modules)
    captured: list = []

    def hook(mod, args, kwargs):
        captured.append(read(args, kwargs))
        if stop and len(captured) == len(modules):
            raise _Captured
    hooks = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    was = model.training
    model.eval()
    try:
        run(images)
    except _Captured:
        pass
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return captured


def offset_quality(maps: torch.Tensor, offsets: torch.Tensor, grid, keep: Callable, share: Callable) -> dict:
    """How impulse-like the maps (B, heads, N, N) of one layer are (``on_data.map_quality``, the one definition)."""
    from .on_data import map_quality
    return map_quality(maps, offsets, grid, keep, share)
