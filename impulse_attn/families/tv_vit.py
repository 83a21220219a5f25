"""torchvision's ``VisionTransformer`` (``torchvision.models.vit_b_16`` and friends) as a ``ViTView``: the same
structured init as timm's ViT, through the standard-ViT engine.

Each ``EncoderBlock`` attends through an ``nn.MultiheadAttention`` whose query, key and value rows are one fused
``in_proj_weight`` (3·D, D) with ``in_proj_bias``; the position embedding ``encoder.pos_embedding`` (1, 1 + N, D)
has the class token's row first (it is added to the class token too), and the token grid is
``image_size // patch_size`` on each side. torchvision's ViT takes 3-channel images only.

``--model tv:<name>`` builds the class a torchvision builder makes (``vit_b_16``, ``swin_t``, ...) directly, with
the builder's own sizes unless a flag or ``--model-kwargs`` sets them (the builders fix the patch size and the
widths, so calling them with other sizes would clash). The names, and why no family takes one, are read here for
both torchvision families (``tv_swin`` imports them).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import warnings

import torch
import torch.nn as nn

from .._validate import heads_divide
from .standard_apply import standard_family
from .source import DATA_KEYWORDS, BuildRequest, ModelSource, given_keywords
from .standard_vit import parameter_estimate
from .view import BlockView, ViTView, check_view

NAME = "torchvision ViT"
#: What a torchvision model's patch embedding takes: ``Conv2d(3, ...)``, with no keyword to change it.
CHANNELS = 3


# --- torchvision's model names, shared with tv_swin ---------------------------------------------------------------
def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise ValueError("--model tv:<name> needs the torchvision package (pip install torchvision)") from None
    return torchvision


@functools.lru_cache(maxsize=None)
def describe_name(name: str) -> dict:
    """{"class": module.Class, "model": the builder's model on the meta device (no memory, no weights)} for a
    torchvision classification model, or {"error": why not}."""
    tv = _torchvision()
    if name not in tv.models.list_models():
        return {"error": "unknown"}
    if name not in tv.models.list_models(module=tv.models):
        # detection, segmentation, video and quantized builders may fetch backbone weights even with weights=None
        module = tv.models.get_model_builder(name).__module__.split(".")[2]
        return {"error": f"a torchvision {module} model, not an image classifier"}
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = tv.models.get_model_builder(name)(weights=None)
    except Exception as e:  # noqa: BLE001 - a registered model that cannot be built this way
        return {"error": f"torchvision could not build {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"}
    return {"class": f"{type(model).__module__}.{type(model).__name__}", "model": model}


def builds(name: str, matches) -> bool:
    """Whether torchvision's builder ``name`` makes a model that ``matches(model)`` (a family's own test)."""
    if not isinstance(name, str) or not name:
        return False
    info = describe_name(name)
    return "model" in info and bool(matches(info["model"]))


def explain(name: str) -> str:
    """Why no torchvision family takes ``name``, and what to use (one line)."""
    tv = _torchvision()
    use = "use a torchvision VisionTransformer or SwinTransformer, e.g. tv:vit_b_16, tv:swin_t"
    info = describe_name(name)
    if info.get("error") == "unknown":
        near = difflib.get_close_matches(name, tv.models.list_models(module=tv.models), n=3, cutoff=0.6)
        hint = f"try {', '.join('tv:' + n for n in near)}" if near else use
        return f"--model tv:{name}: torchvision has no model {name!r} ({hint})"
    if "error" in info:
        return f"--model tv:{name} is {info['error']}, which no init family handles ({use})"
    return f"--model tv:{name} is a {info['class']}, which no init family handles ({use})"


def build_class(cls, name: str, kwargs: dict):
    """``cls(**kwargs)`` with its errors as one-line ValueErrors naming the model."""
    try:
        return cls(**kwargs)
    except (AssertionError, ArithmeticError, ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        sizes = {k: v for k, v in kwargs.items() if not callable(v)}
        raise ValueError(f"torchvision could not build {name} as {cls.__name__} with {sizes} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None


def known_keywords(source: ModelSource, r: BuildRequest) -> dict:
    """``given_keywords`` before the data is read: the flags' keywords (and the data's where known), a
    ``--model-kwargs`` entry that contradicts one refused in one line; the data's unknown ones are left out."""
    unknown = {source.keywords[k] for k in DATA_KEYWORDS if k in source.keywords and getattr(r, k) is None}
    request = dataclasses.replace(r, model_kwargs={k: v for k, v in r.model_kwargs.items() if k not in unknown})
    return {k: v for k, v in given_keywords(source, request).items() if k not in unknown}


def size_name(r: BuildRequest, flag: str, keyword: str) -> str:
    """Where a size comes from, for messages: its flag, its --model-kwargs entry, or the builder's own."""
    if flag in r.flags:
        return f"--{flag.replace('_', '-')}"
    return f"--model-kwargs {keyword}" if keyword in r.model_kwargs else f"tv:{r.name}'s {keyword}"


def check_channels(r: BuildRequest, label: str) -> None:
    if r.channels is not None and r.channels != CHANNELS:
        raise ValueError(f"--model tv:{r.name}: torchvision's {label} takes {CHANNELS}-channel images (its patch "
                         f"embedding is Conv2d({CHANNELS}, ...)), the data has {r.channels}: convert the images to "
                         f"RGB or use a timm model, which takes any channel count")


# --- the view -------------------------------------------------------------------------------------------------
def torchvision_models(module: str = ""):
    """``torchvision.models`` (or its submodule ``module``), or None where torchvision is not installed."""
    try:
        import importlib
        return importlib.import_module("torchvision.models" + (f".{module}" if module else ""))
    except ImportError:  # pragma: no cover - torchvision is a dependency of the setup
        return None


def is_torchvision(model, cls_name: str, module: str = "") -> bool:
    """Whether ``model`` is torchvision's ``cls_name`` (torchvision itself is not imported for another library's)."""
    if not type(model).__module__.startswith("torchvision."):
        return False
    mod = torchvision_models(module)
    return mod is not None and isinstance(model, getattr(mod, cls_name))


def _vit_class():
    return torchvision_models().VisionTransformer


def matches(model) -> bool:
    return is_torchvision(model, "VisionTransformer")


class FusedInProjection:
    """The fused query/key/value projection of an ``nn.MultiheadAttention`` seen as the Linear a ``BlockView``
    slices rows of: ``weight`` and ``bias`` are the module's own parameters, so the engine's writes land in them."""

    def __init__(self, attention: nn.MultiheadAttention):
        self.attention = attention

    @property
    def weight(self) -> nn.Parameter:
        return self.attention.in_proj_weight

    @property
    def bias(self):
        return self.attention.in_proj_bias


def _block(layer, i: int, dim: int) -> BlockView:
    mha = getattr(layer, "self_attention", None)
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"encoder layer {i} has no nn.MultiheadAttention self_attention (got "
                        f"{type(mha).__name__}): not torchvision's EncoderBlock")
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None or mha.embed_dim != dim:
        raise ValueError(f"encoder layer {i}: its attention has separate query/key/value widths; the init needs the "
                         f"fused in_proj_weight of shape (3·{dim}, {dim})")
    if mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
        raise ValueError(f"encoder layer {i}: its attention adds key/value bias tokens or zero attention or is not "
                         f"batch_first, which torchvision's EncoderBlock never does: the maps would not be its own")
    fused = FusedInProjection(mha)
    return BlockView(module=mha, num_heads=int(mha.num_heads), scale=int(mha.head_dim) ** -0.5,
                     q=(fused, slice(0, dim)), k=(fused, slice(dim, 2 * dim)), v=(fused, slice(2 * dim, 3 * dim)),
                     proj=mha.out_proj, q_norm=nn.Identity(), k_norm=nn.Identity())


def _encoder_run(model):
    """images -> the encoder's output: the forward up to the class-token head (the maps are read by hooks)."""
    def run(images):
        x = model._process_input(images)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return model.encoder(x)
    return run


def view(model, need_pos: bool = True) -> ViTView:
    """Check that ``model`` is a torchvision ViT; return its view."""
    cls = _vit_class()
    if cls is None or not isinstance(model, cls):
        raise TypeError(f"model must be a torchvision VisionTransformer (torchvision.models.vit_b_16, ...), got "
                        f"{type(model).__module__}.{type(model).__name__}")
    side = int(model.image_size) // int(model.patch_size)
    dim = int(model.hidden_dim)
    blocks = [_block(layer, i, dim) for i, layer in enumerate(model.encoder.layers)]
    heads = blocks[0].num_heads if blocks else 1
    v = ViTView(model=model, grid=(side, side), dim=dim, heads=heads, head_dim=dim // heads, prefix=1,
                pos=model.encoder.pos_embedding, pos_offset=1, blocks=blocks, run=_encoder_run(model),
                input_shape=(CHANNELS, int(model.image_size), int(model.image_size)))
    return check_view(v, need_pos)


def grid_of(model) -> tuple:
    side = int(model.image_size) // int(model.patch_size)
    return side, side


# --- the command line -----------------------------------------------------------------------------------------
def _own(name: str) -> dict:
    """The builder's own sizes, as VisionTransformer's keywords (read from its meta-device model)."""
    m = describe_name(name).get("model")
    if m is None or not matches(m):
        return {}
    return {"image_size": int(m.image_size), "patch_size": int(m.patch_size), "num_layers": len(m.encoder.layers),
            "num_heads": int(m.encoder.layers[0].num_heads), "hidden_dim": int(m.hidden_dim),
            "mlp_dim": int(m.mlp_dim), "num_classes": int(m.num_classes),
            "representation_size": m.representation_size}


def build(r: BuildRequest):
    kwargs = {**_own(r.name), **r.model_kwargs, **given_keywords(SOURCE, r)}
    return build_class(_vit_class(), r.name, kwargs)


def check(r: BuildRequest) -> None:
    check_channels(r, "VisionTransformer")
    kw = {**_own(r.name), **r.model_kwargs, **known_keywords(SOURCE, r)}
    heads_divide(kw.get("hidden_dim"), kw.get("num_heads"), size_name(r, "dim", "hidden_dim"),
                 size_name(r, "num_heads", "num_heads"))
    size, patch = kw.get("image_size"), kw.get("patch_size")
    if isinstance(size, int) and isinstance(patch, int) and patch > 0 and size % patch:
        raise ValueError(f"--model tv:{r.name}: image size {size} is not a multiple of patch size {patch} "
                         f"(torchvision's VisionTransformer needs whole patches)")


SOURCE = ModelSource(
    spec="tv", prefixed=True, build=build, check=check,
    claims=lambda name: builds(name, matches), explain=explain,
    flags=("dim", "depth", "num_heads", "mlp_dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "hidden_dim", "depth": "num_layers", "num_heads": "num_heads", "mlp_dim": "mlp_dim",
              "patch_size": "patch_size", "num_classes": "num_classes", "image_size": "image_size"},
    defaults={"kernel_size": 3}, parameters=parameter_estimate,
    describe="tv:<name>: a torchvision VisionTransformer (tv:vit_b_16 and friends) built from the class with the "
             "builder's sizes, 3-channel images",
    examples=("tv:vit_b_16",))


FAMILY = standard_family("tv_vit", NAME, matches, view, source=SOURCE, grid_of=grid_of)
