"""Everything one training run depends on, with the published protocol as the defaults (docs/METHOD.md,
"Training protocol").

A run is fully described by its ``TrainConfig``: it is written next to the metrics, stored in every checkpoint,
and ``--resume`` refuses a checkpoint whose config differs in anything that changes the numbers.

This file is the one source of every training setting: each field carries its command-line help, its group, its
choices (taken from the module that owns them) and its validation rule (``options``). The ``train``/``compare``
flags and the ``compare`` variant parser are generated from these fields, so adding a setting means adding one
field here. Which settings apply to which run is ``applies.APPLIES``; what a model is and which flags it reads is
its family's (``impulse_attn.families``: ``--model`` is resolved by ``families.family_for_spec``).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

from .applies import APPLIES, SETTINGS, SIZE_FIELDS, NotApplicable
from .errors import UserError
from .options import (AMP_MODES, DEVICES, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_PER_CLASS, MAX_SEED,
                      MAX_STEPS,
                      MIXUP_MODES, OPTIMIZERS, TRAINING_BYTES_PER_PARAMETER, _attention_backends, _attentions,
                      _augmentations, _datasets, _filters, _fit_backends, _fit_methods, _fit_targets, _inits, _modes,
                      _value_inits, alpha_range, auto_augment_rule, dim_rule, ema_decay_range, field_kind, flag_name,
                      image_size_range, int_range, max_workers, model_kwargs_rule, model_rule, non_negative_float,
                      odd_positive, option, parse_model_kwargs, parse_value, positive, positive_float, probability,
                      seed_range, smoothing_range, unit_half_open, unit_open)
from .paths import check_out_path

__all__ = ["TrainConfig", "APPLIES", "RUNTIME_FIELDS", "fields_by_name", "flag_name", "field_kind", "parse_value",
           "parse_model_kwargs", "check_out_path", "fit_defaults", "NotApplicable", "OPTIMIZERS", "AMP_MODES",
           "DEVICES", "MIXUP_MODES", "MAX_SEED", "MAX_PER_CLASS"]

# Config keys of earlier versions -> their names now.
RENAMED = {"heads": "num_heads", "dim_head": "head_dim"}


def _fit_inputs():
    from ..init.strategies.impulse import FIT_INPUTS
    return FIT_INPUTS


def _model_help() -> str:
    """--model's help, from the registered families' own descriptions."""
    from ..families import families
    lines = [f.source.describe for f in families() if f.source is not None and f.source.describe]
    return ("the model, built by its family: " + "; ".join(lines) + ". For models from other libraries "
            "--image-size, --patch-size, --dim, --depth, --num-heads and --mlp-dim replace the model's own sizes where "
            "its family reads them (the ones not given stay the model's; each flag is refused where it does not "
            "apply, and a --model-kwargs entry that sets the same keyword is refused)")


def _defaults_help(name: str) -> str:
    """'each family's default': the families' tables of init defaults, for --help."""
    from ..families import families
    parts = []
    for f in families():
        table = f.fit_defaults or {}
        value = table.get(name, (table.get("closed_form") or {}).get(name))
        if value is not None:
            parts.append(f"{value} for {f.label}")
    return "each family's default, chosen on val/: " + ", ".join(parts) + " (docs/families.md)"


@dataclass
class TrainConfig:
    # data
    dataset: str = option("cifar10", "cifar10, cifar100, svhn (torchvision, downloaded into --data-dir on first "
                          "use), folder (--data-dir with train/ and val/ and/or test/ class folders; settings are "
                          "chosen on val/, test/ is reported beside it) or synthetic (built in, no download)",
                          "data", choices=_datasets)
    data_dir: str = option("data", "where the dataset lives or is downloaded to", "data", runtime=True)
    per_class: Optional[int] = option(None, "train on a fixed subset of N images per class (nested: the subset "
                                      "for a larger N contains the smaller one)", "data",
                                      check=int_range(1, MAX_PER_CLASS),
                                      none_means="all")
    data_seed: int = option(0, "seed of the --per-class subset and of the synthetic images", "data",
                            check=seed_range)
    augment: str = option("none", "training augmentation: none; flip-crop (random crop of the image zero-padded "
                          "by 1/8 of its side, horizontal flip: the standard CIFAR recipe); paper "
                          "(RandomResizedCrop, horizontal flip, RandAugment(2, 14)); timm (timm's own train "
                          "transform, timm.data.create_transform: RandomResizedCrop, flip, --auto-augment, random "
                          "erasing --reprob)", "data", choices=_augmentations)
    crop_scale: float = option(0.75, "smallest area kept by RandomResizedCrop with --augment paper or timm", "data",
                               check=unit_half_open)
    auto_augment: str = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy of --augment timm (timm's "
                               "RandAugment/AutoAugment/AugMix config string)", "data", check=auto_augment_rule)
    reprob: float = option(0.25, "random-erasing probability of --augment timm (timm's RandomErasing, per-pixel "
                           "noise)", "data", check=probability)
    image_size: Optional[int] = option(None, "resize images to this side", "data", check=image_size_range,
                                       none_means="the dataset's own size")
    synthetic_train: int = option(5000, "training images of --dataset synthetic (fewer than --synthetic-classes "
                                  "leaves some classes out of training; as many "
                                  "as the memory holds)", "data", check=positive)
    synthetic_test: int = option(1000, "test images of --dataset synthetic, at least one per class", "data",
                                 check=positive)
    synthetic_classes: int = option(10, "classes (shapes) of --dataset synthetic, 2 to 10", "data",
                                    check=int_range(2, 10))
    # model
    model: str = option("vit", _model_help(), "model", check=model_rule)
    model_kwargs: Optional[str] = option(None, "more keywords for a model from another library, 'key=value;key=value' with "
                                         "Python literal values (e.g. 'depths=(2,2);num_heads=(2,4);window_size=4' "
                                         "for a small Swin)", "model", check=model_kwargs_rule, none_means="none")
    patch_size: int = option(2, "patch side in pixels", "model", check=int_range(1, MAX_IMAGE_SIZE))
    grid: Optional[int] = option(None, "expected token grid side (image size / patch size), checked before "
                                 "training; the paper always uses 16", "model", check=int_range(1, MAX_IMAGE_SIZE),
                                 none_means="not checked")
    dim: Optional[int] = option(None, "model width (timm: embed_dim)", "model", check=dim_rule,
                                none_means="512 for vit, 256 for convmixer, the model's own for timm")
    depth: Optional[int] = option(None, "blocks", "model", check=positive,
                                  none_means="6 for vit, 8 for convmixer, the model's own for timm")
    num_heads: Optional[int] = option(None, "attention heads (vit, timm)", "model", check=positive,
                                      none_means="8 for vit, the model's own for timm")
    head_dim: Optional[int] = option(None, "width per head (vit; a timm model's is --dim / --num-heads)", "model",
                                     check=positive, none_means="64 for vit")
    mlp_dim: Optional[int] = option(None, "MLP hidden width (vit; timm: mlp_ratio = mlp-dim / dim)", "model",
                                    check=positive, none_means="512 for vit, the model's own for timm")
    attention: str = option("impulse", "impulse: ImpulseAttention (positional encoding mixed into queries/keys); "
                            "plain: standard ViT attention with the encoding added to the tokens", "model",
                            choices=_attentions)
    mode: str = option("I", "ImpulseAttention query/key input: I α·LN(x)+(1−α)·P, II P only, III free maps",
                       "model", choices=_modes)
    alpha: float = option(0.2, "content weight α of mode I", "model", check=alpha_range)
    init: str = option("impulse", "init strategy, applied through impulse_attn.init_ to every family: impulse (each "
                       "head an impulse filter: a query/key fit for vit/timm ViT/hf, the relative position bias for "
                       "Swin, a bank of shifts in the token MLP for MLP-Mixer), mimetic, random (query/key U(±sqrt(1/D))), "
                       "official (the structured-init paper's own closed form; timm/hf ViTs), default (the model's "
                       "own init: PyTorch's, timm's or Hugging Face's), or any registered strategy; one that does not "
                       "apply to the model is refused", "model", choices=_inits)
    kernel_size: Optional[int] = option(None, "impulse window k (vit, timm) or depthwise filter size (convmixer)",
                                        "model", check=odd_positive,
                                        none_means="5 for vit, 3 for convmixer, timm and hf")
    scale: Optional[float] = option(None, "softmax scale of the attention", "model", check=positive_float,
                                    none_means="the fit's scale for impulse init, head_dim^-0.5 otherwise")
    fit_method: str = option("closed_form", "impulse fit: closed form (instant) or the published iterative Adam "
                             "recipe; official (timm models only): the structured-init paper's own closed form, and "
                             "for --init mimetic its own mimetic init", "model", choices=_fit_methods)
    fit_target: Optional[str] = option(None, "shape of the closed-form fit's target logits around each head's "
                                       "offset: impulse (row match + column match) or laplace (a local blob, the "
                                       "shape of the published recipe's maps; see impulse_attn.targets)", "model",
                                       choices=_fit_targets, none_means="laplace for vit, impulse for timm")
    fit_offsets: str = option("random", "impulse offsets: random (drawn with replacement, fresh for every layer, "
                              "as published) or cycle (head h takes window position h mod k² in every layer: with "
                              "--num-heads >= k² every offset is used)", "model", choices=lambda: ("random", "cycle"))
    value_init: str = option("default", "value and output projections (vit): default (PyTorch's) or mimetic "
                             "(value-then-projection ≈ 0.4·Z − 0.4·I, as the later versions of the method do)",
                             "model", choices=_value_inits)
    fit_steps: int = option(10000, f"steps of the iterative fit (at most {MAX_STEPS})", "model",
                            check=int_range(1, MAX_STEPS))
    fit_backend: str = option("auto", "where the iterative fit runs (auto: the compiled extension when built)",
                              "model", choices=_fit_backends)
    target_mass: Optional[float] = option(None, "closed-form fit sharpness: mean attention mass on the target "
                                          "token", "model", check=unit_open,
                                          none_means=_defaults_help("target_mass"))
    window_mass: Optional[float] = option(None, "Swin impulse init: the mass its window bias puts on the target "
                                          "key of an interior query", "model", check=unit_open,
                                          none_means=_defaults_help("window_mass"))
    mix_gain: Optional[float] = option(None, "MLP-Mixer impulse init: gain of the token MLP's shift bank", "model",
                                       check=positive_float, none_means=_defaults_help("gain"))
    position_share: Optional[float] = option(None, "standard ViT impulse init: the share of every block's query/key "
                                             "input variance that position carries at init, on a batch of "
                                             "training images; the position embedding's scale is calibrated to it "
                                             "(docs/families.md, 'The prior on data')", "model", check=unit_open,
                                             none_means=_defaults_help("position_share"))
    pos_scale: Optional[float] = option(None, "standard ViT impulse init: a fixed multiplier of the position "
                                        "embedding instead of the calibration (18: the structured-init paper's)",
                                        "model", check=positive_float,
                                        none_means="calibrated (--position-share)")
    fit_input: Optional[str] = option(None, "standard ViT impulse init: what the query/key fit reads: position "
                                      "(the layer-normed position embedding, as the paper) or data (each block's "
                                      "input averaged over a batch of training images)", "model",
                                      choices=_fit_inputs, none_means=_defaults_help("fit_input"))
    attention_backend: str = option("auto", "attention implementation (auto: the fastest that gives the "
                                    "reference's result here)", "model", choices=_attention_backends)
    filters: str = option("learned", "ConvMixer depthwise filters: learned from PyTorch's init, or a filter bank",
                          "model", choices=_filters)
    freeze: bool = option(False, "keep the ConvMixer filter bank fixed", "model")
    box_n: Optional[int] = option(None, "ones per box filter", "model", check=positive,
                                  none_means="k², the averaging box")
    # optimization
    epochs: int = option(200, f"training epochs, at most {MAX_EPOCHS}", "optimization",
                         check=int_range(1, MAX_EPOCHS))
    steps: Optional[int] = option(None, "a fixed budget of optimizer steps instead of --epochs (the run lasts as "
                                  "many epochs as that takes, the last one cut short); the same budget at every "
                                  "--per-class size trains smaller sets for more epochs; at most "
                                  f"{MAX_STEPS}", "optimization", check=int_range(1, MAX_STEPS),
                                  none_means="--epochs")
    batch_size: int = option(512, "training batch size: the global batch, over all processes of a torchrun "
                             "launch (each of N processes takes batch-size / N); a batch larger than the training set takes the "
                             f"whole set in every step; at most {MAX_BATCH_SIZE}", "optimization",
                             check=int_range(1, MAX_BATCH_SIZE))
    eval_batch_size: Optional[int] = option(None, "evaluation batch size (global, like --batch-size)",
                                            "optimization", check=int_range(1, MAX_BATCH_SIZE),
                                            none_means="--batch-size")
    optimizer: str = option("adam", "optimizer", "optimization", choices=lambda: OPTIMIZERS)
    lr: float = option(1e-4, "peak learning rate", "optimization", check=positive_float)
    weight_decay: float = option(0.0, "weight decay", "optimization", check=non_negative_float)
    warmup_epochs: float = option(0.0, "linear warmup before the cosine schedule", "optimization",
                                  check=non_negative_float)
    min_lr: float = option(0.0, "learning rate at the end of the cosine, at most --lr", "optimization",
                           check=non_negative_float)
    clip_grad: float = option(0.0, "gradient norm clipping (0: off)", "optimization", check=non_negative_float)
    amp: str = option("auto", "mixed precision (auto: on with CUDA, off on the CPU)", "optimization",
                      choices=lambda: AMP_MODES)
    seed: int = option(0, "seed of the model init and the data order", "optimization", check=seed_range)
    eval_every: int = option(1, "evaluate every N epochs (and always at init and after the last epoch)",
                             "optimization", check=int_range(1, MAX_EPOCHS))
    # regularization: timm's own implementations (timm.data.Mixup, timm.loss, timm.utils.ModelEmaV3)
    mixup: float = option(0.0, "mixup strength (timm's mixup_alpha; 0: off); with mixup or cutmix the loss is "
                          "timm's SoftTargetCrossEntropy and the last incomplete batch of an epoch is dropped",
                          "regularization", check=non_negative_float)
    cutmix: float = option(0.0, "cutmix strength (timm's cutmix_alpha; 0: off)", "regularization",
                           check=non_negative_float)
    mixup_prob: float = option(1.0, "probability of mixing a batch (with --mixup or --cutmix)", "regularization",
                               check=probability)
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on",
                                      "regularization", check=probability)
    mixup_mode: str = option("batch", "mixup/cutmix parameters per batch, pair or element", "regularization",
                             choices=lambda: MIXUP_MODES)
    smoothing: float = option(0.0, "label smoothing (timm.loss.LabelSmoothingCrossEntropy; with mixup/cutmix "
                              "the Mixup's label_smoothing)", "regularization", check=smoothing_range)
    model_ema: bool = option(False, "keep an exponential moving average of the weights (timm.utils.ModelEmaV3), "
                             "evaluate it instead of the raw weights, and save it in the checkpoint",
                             "regularization")
    model_ema_decay: float = option(0.9998, "EMA decay per optimizer step", "regularization",
                                    check=ema_decay_range)
    model_ema_warmup: bool = option(False, "ramp the EMA decay up from 0 (ModelEmaV3's use_warmup)",
                                    "regularization")
    # runtime
    out: str = option("runs/train", "run folder: metrics.jsonl, checkpoint.pt, run.json", "runtime", runtime=True)
    resume: bool = option(False, "continue the run in --out from its last checkpoint", "runtime", runtime=True)
    device: str = option("auto", "where to train", "runtime", choices=lambda: DEVICES, runtime=True)
    num_workers: int = option(0, "data loader worker processes (at most 4 per CPU core)", "runtime",
                              check=int_range(0, max_workers), runtime=True)
    progress: bool = option(True, "progress bars", "runtime", runtime=True, flag="--no-progress")
    compile: bool = option(False, "torch.compile the model", "runtime", runtime=True)

    def resolved(self) -> "TrainConfig":
        """A copy with the model-dependent defaults (its family's source's) filled in."""
        filled = {k: v for k, v in self.source.defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    @property
    def family(self):
        """The init family that builds --model (``families.family_for_spec``), or a UserError naming the forms."""
        from ..families import family_for_spec
        problem = model_rule(self.model)
        if problem:
            raise UserError(f"--model {problem}, got {self.model!r}", "see impulse-attn train --help")
        try:
            return family_for_spec(self.model)[0]
        except ValueError as e:
            raise UserError(str(e), "see impulse-attn train --help") from None

    @property
    def source(self):
        """The family's ``ModelSource``: which flags --model reads and how it is built."""
        return self.family.source

    @property
    def model_name(self) -> str:
        """The name after --model's prefix ("" for the package's own models)."""
        return self.model.partition(":")[2].strip()

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix)."""
        return self.mixup > 0 or self.cutmix > 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise UserError(f"run settings must be a mapping, got {type(d).__name__}", "check the run folder")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - set(RENAMED)
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}", "check the spelling")
        d = dict(d)
        for old, new in RENAMED.items():  # runs written before the names were unified
            if old in d and new not in d:
                d[new] = d.pop(old)
        if isinstance(d.get("augment"), bool):  # runs written before --augment took a recipe name
            d["augment"] = "paper" if d["augment"] else "none"
        return cls(**d)

    def differences(self, other: "TrainConfig") -> dict:
        """{field: (self value, other value)} for the fields that change a run's numbers."""
        a, b = self.resolved().as_dict(), other.resolved().as_dict()
        return {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}

    def arguments_for(self, constructor, exclude=()) -> dict:
        """The fields named like ``constructor``'s parameters, not None (None: the constructor's own default).

        This is how settings reach the model and the optimizer: a new SimpleViT or optimizer setting needs only
        its field here, and the factory and the loop pass it on by name."""
        import inspect
        names = {f.name for f in fields(self)}
        return {p: getattr(self, p) for p in inspect.signature(constructor).parameters
                if p in names and p not in exclude and getattr(self, p) is not None}

    def check(self, applicability: str = "warn") -> None:
        """Validate every value against its field's rule, before any data is read or file written.

        A setting that the chosen model, init or recipe would not use (``APPLIES``) is refused with
        ``applicability="refuse"`` (the command line), reported as a one-line ``UserWarning`` with "warn" (the
        default: the Python API keeps working with settings it ignores), or passed over with "skip" (``compare``
        decides over all its variants). Rules marked ``always`` are refused in every case."""
        if applicability not in ("refuse", "warn", "skip"):
            raise ValueError(f"applicability must be 'refuse', 'warn' or 'skip', got {applicability!r}")
        c = self.resolved()
        for f in fields(c):
            value, meta = getattr(c, f.name), f.metadata
            if value is None and meta.get("none_means") is not None:
                continue
            why = None
            if meta.get("choices") is not None:
                allowed = tuple(meta["choices"]())
                if value not in allowed:
                    why = f"must be one of {', '.join(allowed)}"
            elif meta.get("check") is not None:
                why = meta["check"](value)
            elif f.type in ("bool", bool) and not isinstance(value, bool):
                why = "must be true or false"
            elif f.type in ("str", str) and not isinstance(value, str):
                why = "must be a string"
            if why:
                raise UserError(f"{flag_name(f)} {why}, got {value!r}", "see impulse-attn train --help")
        if c.steps is None and c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
            raise UserError(f"--warmup-epochs {c.warmup_epochs} must be shorter than --epochs {c.epochs}",
                            "lower the warmup")
        if c.min_lr > c.lr:
            raise UserError(f"--min-lr {c.min_lr} is above --lr {c.lr} (the cosine schedule would rise)",
                            f"use --min-lr {c.lr} or less")
        c._check_fit_method()
        c._check_fit_backend()
        for problem in self.not_applicable():
            if applicability == "refuse" or problem.always:
                raise UserError(problem.message, problem.fix)
            if applicability == "warn":
                warnings.warn(f"{problem.message}: it is ignored", UserWarning, stacklevel=2)
        c._check_counts()
        uses_timm = [flag for flag, on in (("--augment timm", c.augment == "timm"), ("--mixup/--cutmix", c.mixes),
                                           ("--smoothing", c.smoothing > 0), ("--model-ema", c.model_ema)) if on]
        if uses_timm:
            try:
                import timm  # noqa: F401
            except ImportError:
                raise UserError(f"{', '.join(uses_timm)} need{'s' if len(uses_timm) == 1 else ''} the timm package",
                                "pip install 'timm>=1.0'") from None
        c.check_model()
        if c.augment == "timm":
            from .data import check_auto_augment
            check_auto_augment(c.auto_augment)
        if c.image_size is not None and c.patch_size > c.image_size:
            raise UserError(f"--patch-size {c.patch_size} is larger than --image-size {c.image_size}",
                            "use a smaller patch")

    def model_flags(self) -> dict:
        """The flags of the model's family (its source's ``flags``) that are set, --model-kwargs aside."""
        return {name: getattr(self, name) for name in self.source.flags
                if name != "model_kwargs" and getattr(self, name) is not None}

    def build_request(self, num_classes=None, image_size=None, channels=None, **init):
        """What the model's family builds from (``families.BuildRequest``); the data's sizes are None before the
        data is read (the family's checks then skip what needs them)."""
        from ..families import BuildRequest
        c = self.resolved()
        return BuildRequest(c.model_name, c.model_flags(), parse_model_kwargs(c.model_kwargs), num_classes,
                            image_size if image_size is not None else c.image_size, channels, c, **init)

    def check_model(self, num_classes=None, image_size=None, channels=None) -> None:
        """The model's family's own refusals (``ModelSource.check``), as one-line UserErrors, before any work."""
        check = self.source.check
        if check is None:
            return
        try:
            check(self.build_request(num_classes, image_size, channels))
        except (ValueError, TypeError) as e:
            text = str(e).splitlines()[0]     # the family's message names the flag and, after ': ', the fix
            raise UserError(text, "" if ": " in text else "change the flag it names (see impulse-attn train --help)"
                            ) from None

    def _check_fit_backend(self) -> None:
        """An iterative fit's explicit compiled backend must run here (before any work, as the fit command)."""
        backend = self.init_settings().get("backend")
        if backend is None:
            return
        from ..fitting import backends
        why = backends.unavailable_reason(backend, probe=False) if backend in backends.COMPILED else None
        if why is not None:
            raise UserError(f"--fit-backend {backend} cannot run here: {why}",
                            "use --fit-backend auto (the fastest that runs here) or reference")

    def _check_fit_method(self) -> None:
        """--fit-method must be one the --init strategy takes where the model uses it."""
        if "fit_method" in {f for p in self.not_applicable() for f in p.fields}:
            return                        # refused or warned as not applicable, by the table
        from ..init import get_strategy
        strategy = get_strategy(self.init)
        if strategy.fit_methods and self.fit_method not in strategy.fit_methods:
            hint = ("use --init official (the structured-init paper's own closed form)"
                    if self.fit_method == "official" else f"use one of {', '.join(strategy.fit_methods)}")
            raise UserError(f"--init {self.init} takes --fit-method {' or '.join(strategy.fit_methods)}, got "
                            f"{self.fit_method}", hint)

    def init_settings(self) -> dict:
        """The init settings this run passes its strategy (``applies.SETTINGS``): those given, that the family's
        layers use and the strategy takes, for the chosen fit method."""
        c, out = self.resolved(), {}
        for name, (setting, _) in SETTINGS.items():
            value = getattr(c, name)
            if value is None or APPLIES[name].failed(c) is not None:
                continue
            out[setting] = value
        return out

    def _check_counts(self) -> None:
        """Counts bounded by the data and the memory: the synthetic images and the model's training state fit in
        memory. (On the resolved config.)"""
        from .._validate import available_memory
        free = available_memory()
        if self.dataset == "synthetic":
            from .synthetic import synthetic_bytes
            for name in ("synthetic_train", "synthetic_test"):
                n, flag = getattr(self, name), flag_name(fields_by_name()[name])
                need = synthetic_bytes(n, self.image_size or 32)
                if free is not None and need > free:
                    raise UserError(f"{flag} {n}: the images need about {need / 2 ** 30:.1f} GiB, more than the "
                                    f"{free / 2 ** 30:.1f} GiB available", f"use a smaller {flag}")
            if self.per_class is not None and self.per_class > self.synthetic_train // self.synthetic_classes:
                raise UserError(f"--per-class {self.per_class} asks for more images than a class of the synthetic "
                                f"set has ({self.synthetic_train // self.synthetic_classes})",
                                "use a smaller --per-class or a larger --synthetic-train")
        params = self.parameter_estimate()
        if params is not None and free is not None and params * TRAINING_BYTES_PER_PARAMETER > free:
            sizes = ", ".join(f"{flag_name(fields_by_name()[k])} {getattr(self, k)}" for k in SIZE_FIELDS
                              if getattr(self, k) is not None and k in self.source.flags)
            raise UserError(f"{sizes}: a {self.model} of this size needs about "
                            f"{params * TRAINING_BYTES_PER_PARAMETER / 2 ** 30:.1f} GiB for its weights, gradients "
                            f"and optimizer state, more than the {free / 2 ** 30:.1f} GiB available",
                            "use a smaller model")

    def parameter_estimate(self) -> Optional[int]:
        """About how many parameters the blocks of the resolved model hold (None where the sizes are the model's
        own): what the memory check before any work weighs (the family's estimate)."""
        estimate = self.source.parameters
        return None if estimate is None else estimate(self)

    def not_applicable(self) -> List["NotApplicable"]:
        """The settings given (not at their defaults) that the chosen model, init or recipe does not use, by the
        table ``APPLIES``."""
        c = self.resolved()
        model_defaults = c.source.defaults
        groups: Dict[str, list] = {}   # settings refused for the same reason share one message
        for name, rule in APPLIES.items():
            f = fields_by_name()[name]
            value = getattr(self, name)
            if value == f.default or (name in model_defaults and value == model_defaults[name]):
                continue
            failed = rule.failed(c)
            if failed is not None:
                groups.setdefault(failed.here(c), []).append((name, rule))
        out = []
        for here, items in groups.items():
            flags = " ".join(flag_name(fields_by_name()[name]) for name, _ in items)
            verb = "does" if len(items) == 1 else "do"
            wheres = list(dict.fromkeys(rule.place() for _, rule in items))
            only = f" (only {wheres[0]})" if len(wheres) == 1 else " (see impulse-attn train --help)"
            out.append(NotApplicable(tuple(name for name, _ in items), f"{flags} {verb} not apply {here}{only}",
                                     "drop it" if len(items) == 1 else "drop them",
                                     any(rule.always(c) for _, rule in items)))
        return out


RUNTIME_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("runtime"))
AUGMENTATION_FIELD = "augment"


def fields_by_name() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def fit_defaults() -> dict:
    """The ``fit_impulse`` arguments of a default model's impulse init (the Simple ViT of the published protocol):
    its sizes, depth (one fit per layer), α, fit method, recipe and offsets from ``TrainConfig``, the closed form's
    target and sharpness from the query/key layers' table (``attention.FIT_DEFAULTS``), the layer's softmax scale
    ("auto", see ``init.default_scale``), and ``fit_impulse``'s own defaults for everything a model leaves alone.
    The ``fit`` command's defaults are these, so that it shows the fit a default model makes."""
    import inspect

    from ..attention import FIT_DEFAULTS
    from ..fitting.api import fit_impulse
    from .data import NATIVE_SIZE
    vit = TrainConfig().resolved()
    out = {name: p.default for name, p in inspect.signature(fit_impulse).parameters.items()
           if p.default is not inspect.Parameter.empty}
    out.update(num_heads=vit.num_heads, grid_size=NATIVE_SIZE[vit.dataset] // vit.patch_size,
               kernel_size=vit.kernel_size, dim=vit.dim, head_dim=vit.head_dim, layers=vit.depth, seed=vit.seed,
               fit_method=vit.fit_method, steps=vit.fit_steps, backend=vit.fit_backend, offsets=vit.fit_offsets,
               alpha=vit.alpha, scale="auto", **FIT_DEFAULTS["closed_form"])
    return out

