"""Everything one training run depends on, with the published protocol as the defaults (docs/METHOD.md,
"Training protocol").

A run is fully described by its ``TrainConfig``: it is written next to the metrics, stored in every checkpoint,
and ``--resume`` refuses a checkpoint whose config differs in anything that changes the numbers.

This file is the one source of every training setting: each field carries its command-line help, its group, its
choices (taken from the module that owns them) and its validation rule. The ``train``/``compare`` flags and the
``compare`` variant parser are generated from these fields, so adding a setting means adding one field here.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import UserError

MODELS = ("vit", "convmixer")
# --model timm:<name>: a timm ViT, Swin Transformer or MLP-Mixer made by timm.create_model; --model hf:<name>: a
# Hugging Face ViT or DeiT (vit, deit, or a config.json) (see factory.build_external_model).
TIMM_PREFIX = "timm:"
HF_PREFIX = "hf:"
EXTERNAL_KINDS = ("timm", "hf")
OPTIMIZERS = ("adam", "adamw")
AMP_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")

# Model-dependent defaults: the paper's Simple ViT and the ConvMixer study's settings.
# timm models keep their own sizes unless a size flag is given; k = 3 is the structured-init paper's window.
# (convmixer carries the ViT numbers it ignores, so its saved settings read as they always have.)
MODEL_DEFAULTS = {
    "vit": {"dim": 512, "depth": 6, "kernel_size": 5, "num_heads": 8, "head_dim": 64, "mlp_dim": 512},
    "convmixer": {"dim": 256, "depth": 8, "kernel_size": 3, "num_heads": 8, "head_dim": 64, "mlp_dim": 512},
    "timm": {"kernel_size": 3},
    "hf": {"kernel_size": 3},
}
MIXUP_MODES = ("batch", "pair", "elem")

# Config keys of earlier versions -> their names now.
RENAMED = {"heads": "num_heads", "dim_head": "head_dim"}

# Anything larger is refused before allocating: a 4096×4096 image is already 50 M pixels per sample.
MAX_IMAGE_SIZE = 4096
MAX_SEED = 2 ** 63 - 1
# The largest counts accepted, far above any real run (the paper: 200 epochs, about 20,000 steps, batch 512), so
# that a typo such as 2**70 is refused instead of running forever or overflowing a C integer.
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000
# A batch larger than the training set takes the whole set in every step; beyond this it is certainly a typo.
MAX_BATCH_SIZE = 2 ** 20
MAX_KERNEL_SIZE = 2 * MAX_IMAGE_SIZE - 1
# No dataset read here has more images per class.
MAX_PER_CLASS = 10_000_000
# Bytes per parameter during training: the weight, its gradient and Adam's two moments, float32.
TRAINING_BYTES_PER_PARAMETER = 16


# --- value rules (each written once; the field metadata points at them) ---------------------------------------
def _is_int(v) -> bool:
    try:
        import numpy as np
        if isinstance(v, np.integer):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(v, int) and not isinstance(v, bool)


def positive(v) -> Optional[str]:
    return None if _is_int(v) and v >= 1 else "must be a positive integer"


def int_range(low: int, high) -> Callable[[Any], Optional[str]]:
    """A rule: an integer in [low, high]; ``high`` may be a callable (a bound read from the machine)."""
    def rule(v) -> Optional[str]:
        top = high() if callable(high) else high
        return None if _is_int(v) and low <= v <= top else f"must be an integer in [{low}, {top}]"
    return rule


def max_workers() -> int:
    """The most data loader workers accepted: four per CPU core of this machine."""
    return 4 * (os.cpu_count() or 1)


def non_negative_int(v) -> Optional[str]:
    return None if _is_int(v) and v >= 0 else "must be an integer >= 0"


def seed_range(v) -> Optional[str]:
    return None if _is_int(v) and 0 <= v <= MAX_SEED else f"must be an integer in [0, 2**63 - 1]"


def positive_float(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "must be a finite number > 0"


def non_negative_float(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "must be a finite number >= 0 (0 turns it off)"


def unit_open(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
    return None if ok else "must be a number in (0, 1)"


def unit_half_open(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
    return None if ok else "must be a number in (0, 1]"


def alpha_range(v) -> Optional[str]:
    # α = 1 leaves no positional part in mode I's query/key input; impulse init refuses it later, by name.
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    return None if ok else "must be a number in [0, 1] (the paper sweeps 0 to 0.5)"


def odd_positive(v) -> Optional[str]:
    ok = _is_int(v) and 1 <= v <= MAX_KERNEL_SIZE and v % 2 == 1
    return None if ok else f"must be an odd integer in [1, {MAX_KERNEL_SIZE}] (e.g. 3 or 5)"


def image_size_range(v) -> Optional[str]:
    return None if _is_int(v) and 1 <= v <= MAX_IMAGE_SIZE else f"must be an integer in [1, {MAX_IMAGE_SIZE}]"


def dim_rule(v) -> Optional[str]:
    return None if _is_int(v) and v >= 1 else "must be a positive integer"


def model_kind(name) -> Optional[str]:
    """"vit", "convmixer", "timm" or "hf" for a --model value, None when it is none of them."""
    if name in MODELS:
        return name
    for kind, prefix in (("timm", TIMM_PREFIX), ("hf", HF_PREFIX)):
        if isinstance(name, str) and name.startswith(prefix) and name[len(prefix):].strip():
            return kind
    return None


def timm_name(name: str) -> str:
    """The name after the timm: or hf: prefix."""
    return name.split(":", 1)[1].strip()


def model_rule(v) -> Optional[str]:
    return None if model_kind(v) else ("must be vit, convmixer, timm:<name> (a timm ViT, Swin or MLP-Mixer, e.g. "
                                        "timm:vit_tiny_patch16_224) or hf:<vit, deit or a config.json>")


def model_kwargs_rule(v) -> Optional[str]:
    if v is None:
        return None
    try:
        parse_model_kwargs(v)
    except ValueError as e:
        return str(e)
    return None


def parse_model_kwargs(text: Optional[str]) -> dict:
    """'key=value;key=value' with Python literal values (numbers, tuples, strings) -> dict."""
    import ast
    out = {}
    if not text:
        return out
    if not isinstance(text, str):
        raise ValueError("must be a string of key=value pairs separated by ';'")
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"must be key=value pairs separated by ';' (e.g. 'depths=(2,2);window_size=4'), got "
                             f"{part.strip()!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def probability(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    return None if ok else "must be a number in [0, 1]"


def smoothing_range(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
    return None if ok else "must be a number in [0, 1) (0 turns it off)"


def ema_decay_range(v) -> Optional[str]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
    return None if ok else "must be a number in (0, 1), e.g. 0.9998"


def auto_augment_rule(v) -> Optional[str]:
    if not isinstance(v, str) or not v.strip():
        return "must be a timm auto-augment policy string such as rand-m9-mstd0.5-inc1"
    return None


def option(default: Any, help: str, group: str, *, choices: Optional[Callable[[], Sequence[str]]] = None,
           check: Optional[Callable[[Any], Optional[str]]] = None, none_means: Optional[str] = None,
           runtime: bool = False, flag: Optional[str] = None):
    """A TrainConfig field with its command-line face: ``help``, ``group``, ``choices`` (a callable, so the list
    is read from the module that owns it), ``check`` (returns why a value is wrong, or None), ``none_means``
    (what None stands for, shown as the default), ``runtime`` (may differ between a run and its resumption)."""
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, check=check,
                                                none_means=none_means, runtime=runtime, flag=flag))


def _datasets():
    from .data import DATASETS
    return DATASETS


def _augmentations():
    from .data import AUGMENTATIONS
    return AUGMENTATIONS


def _attentions():
    from ..models.simple_vit import ATTENTIONS
    return ATTENTIONS


def _modes():
    from ..attention import MODES
    return MODES


def _inits():
    from ..init import INIT_STRATEGIES
    return INIT_STRATEGIES


def _fit_methods():
    from ..fitting import FIT_METHODS
    return tuple(FIT_METHODS) + ("official",)


def _fit_backends():
    from ..fitting import FIT_BACKENDS
    return FIT_BACKENDS


def _attention_backends():
    from ..attention import ATTENTION_BACKENDS
    return ATTENTION_BACKENDS


def _filters():
    from ..models.convmixer import FILTER_INITS
    return FILTER_INITS


def _value_inits():
    from ..init import VALUE_INITS
    return VALUE_INITS


def _fit_targets():
    from ..targets import TARGET_SHAPES
    return TARGET_SHAPES


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
    synthetic_train: int = option(5000, "training images of --dataset synthetic, at least one per class (as many "
                                  "as the memory holds)", "data", check=positive)
    synthetic_test: int = option(1000, "test images of --dataset synthetic, at least one per class", "data",
                                 check=positive)
    synthetic_classes: int = option(10, "classes (shapes) of --dataset synthetic, 2 to 10", "data",
                                    check=int_range(2, 10))
    # model
    model: str = option("vit", "vit (the Simple ViT), convmixer, timm:<name> (a timm VisionTransformer, "
                        "SwinTransformer or MlpMixer made by timm.create_model(name, pretrained=False), e.g. "
                        "timm:vit_tiny_patch16_224, timm:swin_tiny_patch4_window7_224, timm:mixer_s16_224) or "
                        "hf:<vit, deit, or a config.json / folder with one> (a Hugging Face ViTForImageClassification "
                        "or DeiTForImageClassification, built from its config, no download). For timm and hf models "
                        "--image-size, --patch-size, --dim, --depth, --num-heads and --mlp-dim replace the model's own "
                        "sizes (the ones not given stay the model's; Swin: --dim is embed_dim, depths and heads per "
                        "stage go in --model-kwargs), --init and the fit flags apply, and the Simple ViT/ConvMixer "
                        "flags (--attention, --mode, --alpha, --scale, --attention-backend, --head-dim, --filters, "
                        "--freeze, --box-n) are refused", "model", check=model_rule)
    model_kwargs: Optional[str] = option(None, "more keywords for a timm or hf model, 'key=value;key=value' with "
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
                                          "token; for a Swin, the mass its window bias puts on the target of an "
                                          "interior query", "model", check=unit_open,
                                          none_means="each family's default, chosen on val/: 0.1 for vit, timm and "
                                          "hf ViTs, 0.7 for Swin (docs/RESULTS.md)")
    mix_gain: Optional[float] = option(None, "MLP-Mixer impulse init: gain of the token MLP's shift bank", "model",
                                       check=positive_float, none_means="2.0, chosen on val/ (docs/RESULTS.md, 'Every family')")
    position_share: Optional[float] = option(None, "timm/HF ViT impulse init: the share of every block's "
                                             "query/key input variance that position carries at init, on a batch "
                                             "of training images; the position embedding's scale is calibrated to "
                                             "it (docs/families.md, 'The prior on data')", "model", check=unit_open,
                                             none_means="the calibrated default, chosen on val/ (docs/RESULTS.md)")
    pos_scale: Optional[float] = option(None, "timm/HF ViT impulse init: a fixed multiplier of the position "
                                        "embedding instead of the calibration (18: the structured-init paper's)",
                                        "model", check=positive_float,
                                        none_means="calibrated (--position-share)")
    fit_input: Optional[str] = option(None, "timm/HF ViT impulse init: what the query/key fit reads: position (the "
                                      "layer-normed position embedding, as the paper) or data (each block's input "
                                      "averaged over a batch of training images)", "model",
                                      choices=lambda: ("position", "data"),
                                      none_means="the calibrated default, chosen on val/ (docs/RESULTS.md)")
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
        """A copy with the model-dependent defaults filled in."""
        kind = model_kind(self.model)
        if kind is None:
            raise UserError(f"--model {model_rule(self.model)}, got {self.model!r}",
                            "use vit, convmixer or timm:vit_tiny_patch16_224")
        filled = {k: v for k, v in MODEL_DEFAULTS[kind].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    @property
    def kind(self) -> str:
        """"vit", "convmixer" or "timm" (the family --model names)."""
        return model_kind(self.model) or ""

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
                raise UserError(f"{flag_name(f)} {why}, got {value!r}", f"see impulse-attn train --help")
        if c.steps is None and c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
            raise UserError(f"--warmup-epochs {c.warmup_epochs} must be shorter than --epochs {c.epochs}",
                            "lower the warmup")
        if c.min_lr > c.lr:
            raise UserError(f"--min-lr {c.min_lr} is above --lr {c.lr} (the cosine schedule would rise)",
                            f"use --min-lr {c.lr} or less")
        if c.model == "vit" and c.dim % 4:
            raise UserError(f"--dim must be a multiple of 4 for the 2D sin-cos encoding, got {c.dim}",
                            f"use {c.dim - c.dim % 4 or 4}")
        if c.fit_method == "official" and c.kind not in EXTERNAL_KINDS:
            raise UserError(f"--fit-method official (the structured-init paper's closed form) is for timm models, "
                            f"not --model {c.model}", "use --fit-method closed_form or iterative, or --model "
                            "timm:<name>")
        for problem in self.not_applicable():
            if applicability == "refuse" or problem.always:
                raise UserError(problem.message, problem.fix)
            if applicability == "warn":
                warnings.warn(f"{problem.message}: it is ignored", UserWarning, stacklevel=2)
        c._check_counts()
        uses_timm = [flag for flag, on in (("--model " + c.model, c.kind in EXTERNAL_KINDS), ("--augment timm",
                     c.augment == "timm"), ("--mixup/--cutmix", c.mixes), ("--smoothing", c.smoothing > 0),
                     ("--model-ema", c.model_ema)) if on]
        if uses_timm:
            try:
                import timm  # noqa: F401
            except ImportError:
                raise UserError(f"{', '.join(uses_timm)} need{'s' if len(uses_timm) == 1 else ''} the timm package",
                                "pip install 'timm>=1.0'") from None
        if c.kind in EXTERNAL_KINDS:
            check_external_name(c)
            if c.dim is not None and c.num_heads is not None and c.dim % c.num_heads:
                raise UserError(f"--dim {c.dim} is not divisible by --num-heads {c.num_heads} (a timm ViT's head "
                                f"width is dim / heads)", "change one of them")
        if c.augment == "timm":
            from .data import check_auto_augment
            check_auto_augment(c.auto_augment)
        if c.model == "vit" and c.init == "impulse" and c.attention == "impulse" and c.mode == "I" and c.alpha >= 1:
            raise UserError("--alpha 1 leaves no positional part in mode I's queries and keys for the impulse init "
                            "to fit", "use --alpha below 1 (the paper sweeps 0 to 0.5)")
        if c.image_size is not None and c.patch_size > c.image_size:
            raise UserError(f"--patch-size {c.patch_size} is larger than --image-size {c.image_size}",
                            "use a smaller patch")

    def _check_counts(self) -> None:
        """Counts bounded by the data and the memory: the synthetic images and the model's training state fit in
        memory, a box filter fits its window. (On the resolved config.)"""
        from .._validate import available_memory
        if self.kind == "convmixer" and self.filters == "box" and self.box_n is not None and \
                self.box_n > self.kernel_size ** 2:
            raise UserError(f"--box-n must be in [1, {self.kernel_size ** 2}] (k² for --kernel-size "
                            f"{self.kernel_size}), got {self.box_n}", "use fewer ones per box filter")
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
            sizes = ", ".join(f"{flag_name(fields_by_name()[k])} {getattr(self, k)}"
                              for k in ("dim", "depth", "num_heads", "head_dim", "mlp_dim", "kernel_size")
                              if getattr(self, k) is not None and k in SIZE_FIELDS[self.kind])
            raise UserError(f"{sizes}: a {self.model} of this size needs about "
                            f"{params * TRAINING_BYTES_PER_PARAMETER / 2 ** 30:.1f} GiB for its weights, gradients "
                            f"and optimizer state, more than the {free / 2 ** 30:.1f} GiB available",
                            "use a smaller model")

    def parameter_estimate(self) -> Optional[int]:
        """About how many parameters the blocks of the resolved model hold (None where the sizes are the timm or
        Hugging Face model's own): what the memory check before any work weighs."""
        c = self
        if c.kind == "vit":
            return c.depth * (4 * c.dim * c.num_heads * c.head_dim + 2 * c.dim * c.mlp_dim)
        if c.kind == "convmixer":
            return c.depth * (c.dim * c.kernel_size ** 2 + c.dim * c.dim)
        if c.dim is None:
            return None
        mlp = c.mlp_dim if c.mlp_dim is not None else 4 * c.dim
        return (c.depth or 12) * (4 * c.dim * c.dim + 2 * c.dim * mlp)

    def not_applicable(self) -> List["NotApplicable"]:
        """The settings given (not at their defaults) that the chosen model, init or recipe does not use, by the
        table ``APPLIES``."""
        c = self.resolved()
        model_defaults = MODEL_DEFAULTS.get(c.kind, {})
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
            wheres = list(dict.fromkeys(rule.where for _, rule in items))
            only = f" (only {wheres[0]})" if len(wheres) == 1 else " (see impulse-attn train --help)"
            out.append(NotApplicable(tuple(name for name, _ in items), f"{flags} {verb} not apply {here}{only}",
                                     "drop it" if len(items) == 1 else "drop them",
                                     any(rule.always(c) for _, rule in items)))
        return out


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
    test: Callable[["TrainConfig"], bool]
    prep: str = "to"
    shown: Optional[Callable[["TrainConfig"], str]] = None

    def here(self, c) -> str:
        if self.shown is not None:
            return self.shown(c)
        value = getattr(c, self.field)
        return f"{self.prep} {flag_name(fields_by_name()[self.field])} {'none' if value is None else value}"


@dataclass(frozen=True)
class Applies:
    """Where a setting applies: every condition holds (checked in order; the first that fails is reported)."""
    conditions: Tuple[Condition, ...]
    where: str
    always: Callable[["TrainConfig"], bool] = lambda c: False

    @property
    def depends(self) -> Tuple[str, ...]:
        return tuple(cond.field for cond in self.conditions)

    def failed(self, c) -> Optional[Condition]:
        return next((cond for cond in self.conditions if not cond.test(c)), None)


def _kind(*kinds: str) -> Condition:
    return Condition("model", lambda c: c.kind in kinds, shown=lambda c: (
        f"to the {c.kind} model {c.model}" if c.kind in EXTERNAL_KINDS else f"to --model {c.model}"))


def _is(name: str, *values) -> Condition:
    return Condition(name, lambda c: getattr(c, name) in values)


def _external(c) -> bool:
    return c.kind in EXTERNAL_KINDS


_ATTENTION_MODELS = _kind("vit", "timm", "hf")
_IMPULSE_FIT = (_ATTENTION_MODELS, _is("init", "impulse"))
# Which settings apply to which model, init, attention, recipe and dataset: one table, checked by
# ``TrainConfig.not_applicable``. A setting not listed applies everywhere. ``always``: refused through the Python
# API too (these were refused before the table existed); the others warn there and are refused on the command line.
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
    # model
    "model_kwargs": Applies((_kind("timm", "hf"),), "to timm:<name> and hf:<name> models", always=lambda c: True),
    "num_heads": Applies((_ATTENTION_MODELS,), "to vit, timm:<name> and hf:<name> models"),
    "mlp_dim": Applies((_ATTENTION_MODELS,), "to vit, timm:<name> and hf:<name> models"),
    "attention": Applies((_kind("vit"),), "to --model vit", always=_external),
    "mode": Applies((_kind("vit"), _is("attention", "impulse")), "to --model vit with --attention impulse",
                    always=_external),
    "alpha": Applies((_kind("vit"), _is("attention", "impulse"), _is("mode", "I")),
                     "to --model vit with --attention impulse and --mode I", always=_external),
    "scale": Applies((_kind("vit"),), "to --model vit", always=_external),
    "attention_backend": Applies((_kind("vit"),), "to --model vit", always=_external),
    "head_dim": Applies((_kind("vit"),), "to --model vit (a timm ViT's head width is --dim / --num-heads)",
                        always=_external),
    "value_init": Applies((_kind("vit"),), "to --model vit", always=_external),
    "init": Applies((_ATTENTION_MODELS,), "to vit, timm:<name> and hf:<name> models (the ConvMixer's filters "
                    "are set by --filters)"),
    "fit_method": Applies((_ATTENTION_MODELS, Condition(
        "init", lambda c: c.init == "impulse" or (c.init == "mimetic" and _external(c)))),
        "with --init impulse (and --init mimetic of timm:<name> and hf:<name> models)"),
    "fit_target": Applies((*_IMPULSE_FIT, _is("fit_method", "closed_form")),
                          "with --init impulse and --fit-method closed_form"),
    "target_mass": Applies((*_IMPULSE_FIT, Condition("fit_method", lambda c: c.fit_method == "closed_form" or
                                                     _external(c))),
                           "with --init impulse and --fit-method closed_form (any fit for a Swin's window bias)"),
    "fit_offsets": Applies((_kind("vit"), _is("init", "impulse")), "to --model vit with --init impulse",
                           always=_external),
    "fit_steps": Applies((*_IMPULSE_FIT, _is("fit_method", "iterative")),
                         "with --init impulse and --fit-method iterative"),
    "fit_backend": Applies((*_IMPULSE_FIT, _is("fit_method", "iterative")),
                           "with --init impulse and --fit-method iterative"),
    "mix_gain": Applies((_kind("timm", "hf"), _is("init", "impulse")),
                        "to timm MLP-Mixer models with --init impulse"),
    "position_share": Applies((_kind("timm", "hf"), _is("init", "impulse"), _is("fit_method", "closed_form",
                                                                                  "iterative")),
                              "to timm and HF ViTs with --init impulse and --fit-method closed_form or iterative"),
    "pos_scale": Applies((_kind("timm", "hf"), _is("init", "impulse"), _is("fit_method", "closed_form", "iterative")),
                         "to timm and HF ViTs with --init impulse and --fit-method closed_form or iterative"),
    "fit_input": Applies((_kind("timm", "hf"), _is("init", "impulse"), _is("fit_method", "closed_form",
                                                                             "iterative")),
                         "to timm and HF ViTs with --init impulse and --fit-method closed_form or iterative"),
    "filters": Applies((_kind("convmixer"),), "to --model convmixer", always=_external),
    "freeze": Applies((_kind("convmixer"), Condition("filters", lambda c: c.filters != "learned")),
                      "to --model convmixer with a filter bank (--filters other than learned)", always=_external),
    "box_n": Applies((_kind("convmixer"), _is("filters", "box")), "to --model convmixer with --filters box",
                     always=_external),
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
# The size fields each model family reads (what a memory refusal lists).
SIZE_FIELDS = {"vit": ("dim", "depth", "num_heads", "head_dim", "mlp_dim"),
               "convmixer": ("dim", "depth", "kernel_size"),
               "timm": ("dim", "depth", "mlp_dim"), "hf": ("dim", "depth", "mlp_dim")}

RUNTIME_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("runtime"))
AUGMENTATION_FIELD = "augment"


def flag_name(f) -> str:
    """The command-line flag of a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_kind(f) -> str:
    """"bool", "int", "float" or "str": what a command-line value of this field is parsed as."""
    t = str(f.type)
    for kind in ("bool", "int", "float"):
        if kind in t:
            return kind
    return "str"


def parse_value(f, text: str):
    """A field's value from text (a flag value or a compare variant): types only; ranges are ``check``'s job."""
    kind = field_kind(f)
    low = text.strip().lower()
    if low in ("none", "null") and f.metadata.get("none_means") is not None:
        return None
    if kind == "bool":
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not true/false")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text


def fields_by_name() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def check_out_path(out, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot hold a run's files: an empty name (it would mean the
    current folder), a NUL character or a name longer than the file system takes, an existing file or a path
    under one, and a place where no file can be created (found by creating and removing one, which also catches
    what permission bits do not say, e.g. /proc, or a read-only mount for root)."""
    text = os.fspath(out) if isinstance(out, os.PathLike) else out
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{flag} must name a folder, got {text!r}", "pass e.g. runs/train")
    if "\0" in text:
        raise UserError(f"{flag} {text!r} holds a NUL character", "pass an ordinary folder path")
    path = Path(text)
    try:
        parent = path
        while not parent.exists():
            parent = parent.parent
        try:
            longest = os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            longest = 255
        too_long = [p for p in path.parts if len(os.fsencode(p)) > longest]
        if too_long:
            raise UserError(f"{flag} {path}: the name {too_long[0][:40]}... is too long (at most {longest} bytes)",
                            "pass a shorter folder name")
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path} is an existing file, not a folder", "pass a folder for the files")
        if not parent.is_dir():
            raise UserError(f"{flag} {path} lies under {parent}, which is a file", "pass a folder path")
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be used ({e.strerror or e})", "pass another folder") from None
    why = None
    if not os.access(parent, os.W_OK | os.X_OK):
        why = f"{parent} is not writable"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".impulse-attn-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            why = f"no file can be created in {parent}: {e.strerror or e}"
    if why:
        raise UserError(f"{flag} {path} cannot be written ({why})", "pass a writable folder")
    return path


def fit_defaults() -> dict:
    """The ``fit_impulse`` arguments of a default model's impulse init (the Simple ViT of the published protocol):
    its sizes, depth (one fit per layer), α, fit method, recipe and offsets from ``TrainConfig``, the closed form's
    target and sharpness from ``init.CLOSED_FORM_DEFAULTS``, the layer's softmax scale ("auto", see
    ``init.default_scale``), and ``fit_impulse``'s own defaults for everything a model leaves alone. The ``fit``
    command's defaults are these, so that it shows the fit a default model makes."""
    import inspect
    from ..fitting.api import fit_impulse
    from ..init import CLOSED_FORM_DEFAULTS
    from .data import NATIVE_SIZE
    vit = TrainConfig().resolved()
    out = {name: p.default for name, p in inspect.signature(fit_impulse).parameters.items()
           if p.default is not inspect.Parameter.empty}
    out.update(num_heads=vit.num_heads, grid_size=NATIVE_SIZE[vit.dataset] // vit.patch_size,
               kernel_size=vit.kernel_size, dim=vit.dim, head_dim=vit.head_dim, layers=vit.depth, seed=vit.seed,
               fit_method=vit.fit_method, steps=vit.fit_steps, backend=vit.fit_backend, offsets=vit.fit_offsets,
               alpha=vit.alpha, scale="auto", **CLOSED_FORM_DEFAULTS)
    return out


# --- the names of timm and Hugging Face models: checked here, before any work; built by factory.py -----------
TIMM_FAMILIES = {"VisionTransformer": "timm_vit", "SwinTransformer": "timm_swin", "MlpMixer": "timm_mixer"}


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("--model timm:<name> needs the timm package", "pip install 'timm>=1.0'") from None
    return timm


@functools.lru_cache(maxsize=None)
def _timm_defaults(name: str) -> dict:
    """The registered model's class and default sizes, read from a copy built on the meta device (no memory,
    no weights)."""
    timm = _timm()
    try:
        import torch
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - a registered model that cannot be built this way
        return {"error": f"timm could not create {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"}
    cls = type(model).__name__
    out = {"class": f"{type(model).__module__}.{cls}", "family": TIMM_FAMILIES.get(cls)}
    if out["family"] == "timm_vit":
        blk = model.blocks[0]
        out.update(embed_dim=int(model.embed_dim), depth=len(model.blocks), num_heads=int(blk.attn.num_heads),
                   mlp_dim=int(blk.mlp.fc1.out_features) if hasattr(blk.mlp, "fc1") else None)
    elif out["family"] == "timm_mixer":
        blk = model.blocks[0]
        n = int(model.stem.num_patches)
        out.update(embed_dim=int(model.embed_dim), depth=len(model.blocks), num_patches=n,
                   patch_size=int(model.stem.patch_size[0]),
                   mlp_ratio=(blk.mlp_tokens.fc1.out_features / int(model.embed_dim),
                              blk.mlp_channels.fc1.out_features / int(model.embed_dim)),
                   block_class=type(blk).__name__)
    elif out["family"] == "timm_swin":
        out.update(embed_dim=int(model.embed_dim))
    return out


def check_timm_name(name: str) -> dict:
    """Refuse, before any work, a name timm's registry does not know or that no init family handles."""
    timm = _timm()
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise UserError(f"--model timm:{name}: timm has no model {name!r}",
                        f"try {', '.join('timm:' + n for n in near)}" if near else
                        "list them with python -c \"import timm; print(timm.list_models('vit_*'))\"")
    info = _timm_defaults(name)
    if "error" in info:
        raise UserError(f"--model timm:{name}: {info['error']}", "choose another timm model")
    if info["family"] is None:
        raise UserError(f"--model timm:{name} is a {info['class']}, which no init family handles",
                        "use a timm VisionTransformer, SwinTransformer (v1) or MlpMixer, e.g. "
                        "timm:vit_tiny_patch16_224, timm:swin_tiny_patch4_window7_224, timm:mixer_s16_224")
    if info["family"] == "timm_mixer" and info.get("block_class") != "MixerBlock":
        raise UserError(f"--model timm:{name} has {info['block_class']} blocks (ResMLP/gMLP), not MixerBlock",
                        "use a timm mixer_* model")
    return info


HF_NAMES = ("vit", "deit")


def _hf_config(name: str, kwargs: dict):
    """A transformers ViT/DeiT config: for "vit"/"deit" with ``kwargs``, or read from a local config.json."""
    try:
        import transformers
    except ImportError:
        raise UserError("--model hf:<name> needs the transformers package", "pip install transformers") from None
    from pathlib import Path
    if name in HF_NAMES:
        cls = transformers.ViTConfig if name == "vit" else transformers.DeiTConfig
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"--model hf:{name}: {e}", "check --model-kwargs") from None
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"--model hf:{name} is neither {' nor '.join(HF_NAMES)} nor a config.json (no download is "
                        f"made)", "use hf:vit, hf:deit or hf:<folder with config.json>")
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path.parent if path.name == "config.json" else path),
                                                      local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises assorted errors for an unreadable config
        raise UserError(f"--model hf:{name}: transformers could not read {path} ({type(e).__name__})",
                        "pass a ViT or DeiT config.json") from None
    if cfg.model_type not in HF_NAMES:
        raise UserError(f"--model hf:{name} is a {cfg.model_type!r} config", "use a ViT or DeiT config")
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    return cfg


def check_external_name(config) -> None:
    """--model timm:<name> or hf:<name>: the name is known and its family handled, before any work."""
    c = config.resolved()
    name = timm_name(c.model)
    family = None
    if c.kind == "timm":
        info = check_timm_name(name)
        family = info["family"]
        if family == "timm_vit" and c.dim is not None and c.num_heads is not None and c.dim % c.num_heads:
            raise UserError(f"--dim {c.dim} is not divisible by --num-heads {c.num_heads} (a timm ViT's head "
                            f"width is dim / heads)", "change one of them")
    else:
        _hf_config(name, {})
        if c.dim is not None and c.num_heads is not None and c.dim % c.num_heads:
            raise UserError(f"--dim {c.dim} is not divisible by --num-heads {c.num_heads}", "change one of them")
    if c.mix_gain is not None and family != "timm_mixer":
        raise UserError("--mix-gain applies to timm MLP-Mixer models only", "drop it")
    if c.pos_scale is not None and c.position_share is not None:
        raise UserError("--pos-scale fixes the position embedding's scale; --position-share calibrates it",
                        "give one of them")
    for flag, value in (("--position-share", c.position_share), ("--fit-input", c.fit_input),
                        ("--pos-scale", c.pos_scale)):
        if value is not None and family not in (None, "timm_vit"):
            raise UserError(f"{flag} applies to timm and Hugging Face ViTs only (their position embedding and "
                            f"query/key fit)", "drop it")
