"""A model family: how to recognise its models, which layer kinds it exposes to the init strategies, how to apply
a strategy, and how to read its attention (or token-mixing) maps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .._validate import model_input
from ..init.registry import LAYER_KINDS, Strategy
from ..targets import impulse_targets, valid_rows


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

    @property
    def offsets(self) -> List[Optional[torch.Tensor]]:
        return [layer.get("offsets") for layer in self.layers]

    def _mean(self, key: str) -> float:
        vals = [layer[key] for layer in self.layers if layer.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    argmax_hit = property(lambda self: self._mean("argmax_hit"))
    target_mass = property(lambda self: self._mean("target_mass"))

    def __str__(self) -> str:
        head = (f"{self.init} init of a {self.family} ({self.kind or 'nothing changed'}), seed {self.seed}: "
                f"{len(self.layers)} layers, {self.seconds:.2f} s")
        lines = [head, *self.notes]
        for i, layer in enumerate(self.layers):
            parts = [f"layer {i:2d}"]
            if layer.get("offsets") is not None:
                parts.append(f"offsets {layer['offsets'].tolist()}")
            for key in ("argmax_hit", "target_mass"):
                if layer.get(key) is not None:
                    parts.append(f"{key} {layer[key]:.3f}")
            lines.append("  ".join(parts))
        return "\n".join(lines)


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
        raise ValueError(f"init {strategy.name!r} does not apply to a {self.label}: it sets "
                         f"{', '.join(has) or 'nothing'}, a {self.label} exposes {', '.join(self.kinds)}{why}")


_FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> Tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def family_of(model) -> Family:
    """The family of ``model``, or a TypeError naming the supported ones."""
    for fam in _FAMILIES.values():
        if fam.matches(model):
            return fam
    raise TypeError(f"no init family knows a {type(model).__module__}.{type(model).__name__}; supported: "
                    f"{', '.join(f.label for f in _FAMILIES.values())}")


@torch.no_grad()
def capture_inputs(model: torch.nn.Module, modules, run: Callable, images: torch.Tensor,
                   read: Callable = lambda args, kwargs: args[0].detach()) -> list:
    """Run ``run(images)`` in eval mode (restored afterwards) and return, per module of ``modules`` in call order,
    ``read(args, kwargs)`` of its input: how the families read the tokens their layers see."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    param = next(model.parameters(), None)
    if param is not None:
        model_input(images, "images", param)
    captured: list = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs: captured.append(read(args, kwargs)),
                                         with_kwargs=True) for m in modules]
    was = model.training
    model.eval()
    try:
        run(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return captured


def offset_quality(maps: torch.Tensor, offsets: torch.Tensor, grid, keep: Callable, share: Callable) -> dict:
    """How impulse-like the maps (1, heads, N, N) of one layer are: over the rows whose target (token + head offset)
    is on the grid and that ``keep(rows, target_weight)`` accepts, the share whose argmax is the target
    (``argmax_hit``) and the mean ``share(rows, target_weight)`` (``target_mass``)."""
    target = impulse_targets(offsets, grid).argmax(-1)                        # (heads, N)
    m = maps[0].to(torch.float64)
    weight = m.gather(-1, target[..., None])[..., 0]
    ok = valid_rows(offsets, grid) & keep(m, weight)
    rows = max(int(ok.sum()), 1)
    return {"argmax_hit": int(((m.argmax(-1) == target) & ok).sum()) / rows,
            "target_mass": float((share(m, weight) * ok).sum()) / rows, "rows": int(ok.sum())}
