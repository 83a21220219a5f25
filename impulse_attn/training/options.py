"""The value rules, choices and command-line faces of the training settings (``TrainConfig``'s fields), and the
bounds they are checked against: one rule per kind of value, each written once and pointed at by the fields."""
from __future__ import annotations

import math
import os
from dataclasses import field
from typing import Any, Callable, Optional, Sequence

OPTIMIZERS = ("adam", "adamw")
AMP_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
MIXUP_MODES = ("batch", "pair", "elem")

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
    return None if _is_int(v) and 0 <= v <= MAX_SEED else "must be an integer in [0, 2**63 - 1]"


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



def model_rule(v) -> Optional[str]:
    """None when a registered family builds --model ``v`` (the name after a prefix is checked before any work, by the
    family), else why not."""
    from ..families import family_for_spec, model_values
    if not isinstance(v, str) or not v.strip():
        return f"must be one of {', '.join(model_values())}"
    prefix, sep, name = v.partition(":")
    try:
        if not sep:
            family_for_spec(v)
        elif not name.strip() or not any(f.source is not None and f.source.prefixed and f.source.spec == prefix.strip()
                                         for f in _families()):
            return f"must be one of {', '.join(model_values())}"
    except ValueError:
        return f"must be one of {', '.join(model_values())}"
    return None


def _families():
    from ..families import families
    return families()


#: The longest --model-kwargs accepted: a few dozen keywords; a longer value is a paste error, and Python's literal
#: parser needs memory in proportion to it.
MAX_MODEL_KWARGS = 4000


def model_kwargs_rule(v) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, str) and len(v) > MAX_MODEL_KWARGS:
        return f"must be at most {MAX_MODEL_KWARGS} characters of key=value pairs, got {len(v)}"
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
    if len(text) > MAX_MODEL_KWARGS:
        raise ValueError(f"must be at most {MAX_MODEL_KWARGS} characters of key=value pairs, got {len(text)}")
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"must be key=value pairs separated by ';' (e.g. 'depths=(2,2);window_size=4'), got "
                             f"{part.strip()!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
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
    """Every fit method a registered strategy takes (closed_form, iterative; official: the mimetic strategy's paper
    orientation), in registry order."""
    from ..init import STRATEGIES
    out: list = []
    for strategy in STRATEGIES.values():
        out += [m for m in strategy.fit_methods if m not in out]
    return tuple(out)


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

