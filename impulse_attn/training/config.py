"""Everything one training run depends on, with the published protocol (METHOD.md §5) as the defaults.

A run is fully described by its ``TrainConfig``: it is written next to the metrics, stored in every checkpoint,
and ``--resume`` refuses a checkpoint whose config differs in anything that changes the numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Optional

from .errors import UserError

MODELS = ("vit", "convmixer")
OPTIMIZERS = ("adam", "adamw")
AMP_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")

# Model-dependent defaults: the paper's Simple ViT and the ConvMixer study's settings.
MODEL_DEFAULTS = {
    "vit": {"dim": 512, "depth": 6, "kernel_size": 5},
    "convmixer": {"dim": 256, "depth": 8, "kernel_size": 3},
}

# Fields that do not change what a run computes: they may differ between a run and its resumption.
RUNTIME_FIELDS = ("out", "resume", "data_dir", "device", "num_workers", "progress", "compile")
AUGMENTATIONS = ("none", "flip-crop", "paper")


@dataclass
class TrainConfig:
    # data
    dataset: str = "cifar10"
    data_dir: str = "data"
    per_class: Optional[int] = None
    data_seed: int = 0                        # seeds the --per-class subset and the synthetic images
    augment: str = "none"                     # none | flip-crop | paper (see data.AUGMENTATIONS)
    crop_scale: float = 0.75                  # RandomResizedCrop's smallest area fraction (--augment paper)
    image_size: Optional[int] = None          # None: the dataset's own size
    synthetic_train: int = 5000               # images in the built-in dataset's train split
    synthetic_test: int = 1000
    synthetic_classes: int = 10               # the first N shapes of synthetic.SHAPES
    # model
    model: str = "vit"
    patch_size: int = 2
    grid: Optional[int] = None                # expected token grid side; checked against image/patch size
    dim: Optional[int] = None                 # None: MODEL_DEFAULTS
    depth: Optional[int] = None
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 512
    attention: str = "impulse"
    mode: str = "I"
    alpha: float = 0.2
    init: str = "impulse"
    kernel_size: Optional[int] = None
    scale: Optional[float] = None
    fit_method: str = "closed_form"
    fit_steps: int = 10000
    target_mass: float = 0.3
    attention_backend: str = "auto"
    filters: str = "learned"
    freeze: bool = False
    box_n: Optional[int] = None
    # optimization
    epochs: int = 200
    steps: Optional[int] = None               # a fixed optimizer-step budget instead of --epochs
    batch_size: int = 512
    eval_batch_size: Optional[int] = None
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    clip_grad: float = 0.0
    amp: str = "auto"
    seed: int = 0
    eval_every: int = 1                       # evaluate every N epochs (and at init and after the last epoch)
    # runtime
    out: str = "runs/train"
    resume: bool = False
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    compile: bool = False

    def resolved(self) -> "TrainConfig":
        """A copy with the model-dependent defaults filled in."""
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}", f"use one of {', '.join(MODELS)}")
        filled = {k: v for k, v in MODEL_DEFAULTS[self.model].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}", "check the spelling")
        d = dict(d)
        if isinstance(d.get("augment"), bool):  # runs written before --augment took a recipe name
            d["augment"] = "paper" if d["augment"] else "none"
        return cls(**d)

    def differences(self, other: "TrainConfig") -> dict:
        """{field: (self value, other value)} for the fields that change a run's numbers."""
        a, b = self.resolved().as_dict(), other.resolved().as_dict()
        return {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}

    def check(self) -> None:
        """Validate the numbers a user types, before any data is read or file written."""
        c = self.resolved()
        for name in ("epochs", "eval_every", "batch_size", "patch_size", "heads", "dim_head", "mlp_dim", "dim", "depth",
                     "synthetic_train", "synthetic_test"):
            v = getattr(c, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}",
                                "pass a value >= 1")
        if not 1 <= c.synthetic_classes <= 10:
            raise UserError(f"--synthetic-classes must be in [1, 10], got {c.synthetic_classes}", "pick 2 to 10")
        if c.per_class is not None and c.per_class < 1:
            raise UserError(f"--per-class must be >= 1, got {c.per_class}", "pass a positive count or leave it out")
        if c.steps is not None and (not isinstance(c.steps, int) or isinstance(c.steps, bool) or c.steps < 1):
            raise UserError(f"--steps must be a positive integer, got {c.steps!r}", "pass a value >= 1 or leave it out")
        if c.eval_batch_size is not None and c.eval_batch_size < 1:
            raise UserError(f"--eval-batch-size must be >= 1, got {c.eval_batch_size}", "pass a positive value")
        if c.lr <= 0 or c.lr != c.lr:
            raise UserError(f"--lr must be > 0, got {c.lr}", "pass a positive learning rate such as 1e-4")
        for name in ("weight_decay", "warmup_epochs", "min_lr", "clip_grad"):
            v = getattr(c, name)
            if v < 0 or v != v:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {v}", "pass 0 to turn it off")
        if c.steps is None and c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
            raise UserError(f"--warmup-epochs {c.warmup_epochs} must be shorter than --epochs {c.epochs}",
                            "lower the warmup")
        if c.kernel_size < 1 or c.kernel_size % 2 == 0:
            raise UserError(f"--kernel-size must be odd and positive, got {c.kernel_size}", "use 3 or 5")
        if not 0 <= c.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1], got {c.alpha}", "the paper sweeps 0 to 0.5")
        if c.model == "vit" and c.dim % 4:
            raise UserError(f"--dim must be a multiple of 4 for the 2D sin-cos encoding, got {c.dim}",
                            f"use {c.dim - c.dim % 4 or 4}")
        for name, allowed in (("augment", AUGMENTATIONS), ("optimizer", OPTIMIZERS), ("amp", AMP_MODES), ("device", DEVICES)):
            if getattr(c, name) not in allowed:
                raise UserError(f"unknown --{name} {getattr(c, name)!r}", f"use one of {', '.join(allowed)}")
