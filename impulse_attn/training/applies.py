"""Which settings apply to which run: one table (``APPLIES``), checked by ``TrainConfig.not_applicable``.

A setting not listed applies everywhere. Model flags apply to the models whose family reads them (its
``ModelSource.flags``); init settings to the families whose layers use them and the inits whose strategy takes them
(``SETTINGS``: the flag's field -> the strategy's name for it). No family is named here: each one says what it
reads in its own file. ``always``: refused through the Python API too (the others warn there and are refused on
the command line).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple


#: The fields that reach an init strategy, as the strategy names them: what ``factory`` passes to ``init_``.
#: (value: (setting, the fit method it needs or None)).
SETTINGS: Dict[str, Tuple[str, Optional[str]]] = {
    "fit_method": ("fit_method", None),
    "fit_target": ("target", "closed_form"),
    "target_mass": ("target_mass", "closed_form"),
    "fit_steps": ("steps", "iterative"),
    "fit_backend": ("backend", "iterative"),
    "fit_offsets": ("offsets", None),
    "position_share": ("position_share", None),
    "pos_scale": ("pos_scale", None),
    "fit_input": ("fit_input", None),
    "window_mass": ("window_mass", None),
    "mix_gain": ("gain", None),
}


@dataclass(frozen=True)
class NotApplicable:
    """A setting given for a model, init or recipe that does not use it."""
    fields: Tuple[str, ...]
    message: str
    fix: str
    always: bool        # refused through the API too (settings that were refused before the table existed)


@dataclass(frozen=True)
class Condition:
    """One condition a setting needs: ``test(config)`` on the resolved config; ``here`` says what is chosen
    instead, e.g. "to --model convmixer"."""
    field: str
    test: Callable
    prep: str = "to"
    shown: Optional[Callable] = None

    def here(self, c) -> str:
        if self.shown is not None:
            return self.shown(c)
        value = getattr(c, self.field)
        return f"{self.prep} --{self.field.replace('_', '-')} {'none' if value is None else value}"


@dataclass(frozen=True)
class Applies:
    """Where a setting applies: every condition holds (checked in order; the first that fails is reported);
    ``where`` says so in words (a callable: read when shown, e.g. from the registered families)."""
    conditions: Tuple[Condition, ...]
    where: object
    always: Callable = lambda c: False

    def place(self) -> str:
        return self.where() if callable(self.where) else self.where

    @property
    def depends(self) -> Tuple[str, ...]:
        return tuple(cond.field for cond in self.conditions)

    def failed(self, c) -> Optional[Condition]:
        return next((cond for cond in self.conditions if not cond.test(c)), None)


def _model_shown(c) -> str:
    return f"to the {c.source.spec} model {c.model}" if c.source.prefixed else f"to --model {c.model}"


def readers(name: str) -> str:
    """The --model values whose family reads the flag ``name`` (for messages)."""
    from ..families import families
    specs = [f.source.model_value() for f in families() if f.source is not None and name in f.source.flags]
    return "--model " + " and ".join(dict.fromkeys(specs)) if specs else "no model"


def reads(name: str) -> Condition:
    """The family of --model reads this flag."""
    return Condition("model", lambda c: name in c.family.source.flags, shown=_model_shown)


def _is(name: str, *values) -> Condition:
    return Condition(name, lambda c: getattr(c, name) in values)


def prefixed(c) -> bool:
    """A model from another library (``--model <prefix>:<name>``): its flags were refused before the table existed."""
    return c.family.source.prefixed


def _has_layers() -> Condition:
    return Condition("model", lambda c: bool(c.family.kinds), shown=_model_shown)


def _kind_takes(c, setting: str) -> bool:
    """The --init strategy's handler for the layer kind the model exposes takes ``setting``."""
    from ..init import get_strategy
    strategy = get_strategy(c.init)
    try:
        return strategy.takes(setting, c.family.kind_for(strategy))
    except ValueError:      # the init does not apply to the model at all: refused by name on its own
        return False


def takes(field: str) -> Tuple[Condition, ...]:
    """An init setting: the family's layers use it, the --init strategy takes it, and its fit method is chosen."""
    setting, method = SETTINGS[field]

    out = (Condition("init", lambda c: _kind_takes(c, setting),
                     shown=lambda c: f"to --init {c.init} on --model {c.model}"),)
    if method is not None:
        out += (_is("fit_method", method),)
    return out


def _where(field: str, extra: str = "") -> str:
    setting, method = SETTINGS[field]
    fit = f" and --fit-method {method}" if method else ""
    return f"to the models and inits that use the init setting {setting}{fit}{extra} (see impulse-attn train --help)"


APPLIES: Dict[str, Applies] = {
    # data
    "data_dir": Applies((Condition("dataset", lambda c: c.dataset != "synthetic"),),
                        "to --dataset folder, cifar10, cifar100 and svhn (the synthetic images are built in)"),
    "data_seed": Applies((Condition("per_class", lambda c: c.per_class is not None or c.dataset == "synthetic",
                                    shown=lambda c: f"to --dataset {c.dataset} without --per-class"),),
                         "with --per-class or --dataset synthetic"),
    "crop_scale": Applies((_is("augment", "paper", "timm"),), "to --augment paper and timm"),
    "auto_augment": Applies((_is("augment", "timm"),), "to --augment timm", always=lambda c: True),
    "reprob": Applies((_is("augment", "timm"),), "to --augment timm", always=lambda c: True),
    "synthetic_train": Applies((_is("dataset", "synthetic"),), "to --dataset synthetic"),
    "synthetic_test": Applies((_is("dataset", "synthetic"),), "to --dataset synthetic"),
    "synthetic_classes": Applies((_is("dataset", "synthetic"),), "to --dataset synthetic"),
    # model: what each family reads (its source's flags)
    "model_kwargs": Applies((reads("model_kwargs"),), lambda: f"to {readers('model_kwargs')}",
                            always=lambda c: True),
    "depth": Applies((reads("depth"),), lambda: f"to {readers('depth')} (per-stage depths go in --model-kwargs)"),
    "num_heads": Applies((reads("num_heads"),), lambda: f"to {readers('num_heads')} (per-stage heads go in "
                         f"--model-kwargs)"),
    "mlp_dim": Applies((reads("mlp_dim"),), lambda: f"to {readers('mlp_dim')}"),
    "attention": Applies((reads("attention"),), lambda: f"to {readers('attention')}", always=prefixed),
    "mode": Applies((reads("mode"), _is("attention", "impulse")),
                    lambda: f"to {readers('mode')} with --attention impulse", always=prefixed),
    "alpha": Applies((reads("alpha"), _is("attention", "impulse"), _is("mode", "I")),
                     lambda: f"to {readers('alpha')} with --attention impulse and --mode I", always=prefixed),
    "scale": Applies((reads("scale"),), lambda: f"to {readers('scale')}", always=prefixed),
    "attention_backend": Applies((reads("attention_backend"),), lambda: f"to {readers('attention_backend')}",
                                 always=prefixed),
    "head_dim": Applies((reads("head_dim"),), lambda: f"to {readers('head_dim')} (another library's ViT's head "
                        f"width is --dim / --num-heads)", always=prefixed),
    "value_init": Applies((reads("value_init"),), lambda: f"to {readers('value_init')}", always=prefixed),
    "init": Applies((_has_layers(),), "to models with layers an init strategy sets (others set their own, e.g. "
                    "a ConvMixer's filters by --filters)"),
    "filters": Applies((reads("filters"),), lambda: f"to {readers('filters')}", always=prefixed),
    "freeze": Applies((reads("freeze"), Condition("filters", lambda c: c.filters != "learned")),
                      lambda: f"to {readers('freeze')} with a filter bank (--filters other than learned)",
                      always=prefixed),
    "box_n": Applies((reads("box_n"), _is("filters", "box")), lambda: f"to {readers('box_n')} with --filters box",
                     always=prefixed),
    "kernel_size": Applies((reads("kernel_size"), Condition(
        "init", lambda c: not c.family.kinds or _kind_takes(c, "kernel_size"),
        shown=lambda c: f"to --init {c.init} on --model {c.model} (it places no offsets)")),
        "to the inits that place offsets in a window (impulse, official) and to models whose own filters it sizes"),
    # init settings: the family's layers use them and the strategy takes them
    **{name: Applies(takes(name), _where(name)) for name in SETTINGS},
    # optimization and regularization
    "epochs": Applies((Condition("steps", lambda c: c.steps is None, prep="with"),),
                      "without --steps, whose budget replaces --epochs"),
    "mixup_prob": Applies((Condition("mixup", lambda c: c.mixes, shown=lambda c: "without --mixup or --cutmix"),),
                          "with --mixup or --cutmix", always=lambda c: True),
    "mixup_switch_prob": Applies((Condition("mixup", lambda c: c.mixes,
                                            shown=lambda c: "without --mixup or --cutmix"),),
                                 "with --mixup or --cutmix", always=lambda c: True),
    "mixup_mode": Applies((Condition("mixup", lambda c: c.mixes, shown=lambda c: "without --mixup or --cutmix"),),
                          "with --mixup or --cutmix", always=lambda c: True),
    "model_ema_decay": Applies((Condition("model_ema", lambda c: c.model_ema, shown=lambda c: "without --model-ema"),),
                               "with --model-ema", always=lambda c: True),
    "model_ema_warmup": Applies((Condition("model_ema", lambda c: c.model_ema,
                                           shown=lambda c: "without --model-ema"),),
                                "with --model-ema", always=lambda c: True),
}
#: The size fields a memory refusal lists (those the model's family reads).
SIZE_FIELDS = ("dim", "depth", "num_heads", "head_dim", "mlp_dim", "kernel_size")
