"""Hugging Face ``transformers`` ViTs (``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``,
``DeiTForImageClassification[WithTeacher]``) as a ``ViTView``: the same structured init as timm's ViT.

Both module layouts are read: ``layers[i].attention.{q,k,v,o}_proj`` (transformers 5) and
``encoder.layer[i].attention.attention.{query,key,value}`` with ``attention.output.dense`` (transformers 4).
The position embedding has rows for the class (and DeiT's distillation) token, which the fit drops.
"""
from __future__ import annotations

import torch.nn as nn

from .._validate import heads_divide
from .standard_apply import standard_family
from .source import BuildRequest, ModelSource, given_keywords
from .standard_vit import parameter_estimate
from .view import BlockView, ViTView, check_view

NAME = "Hugging Face ViT"
_BASES = ("vit", "deit")


def matches(model) -> bool:
    if not type(model).__module__.startswith("transformers.models."):
        return False
    return _base(model) is not None


def _base(model):
    """The ViTModel/DeiTModel inside ``model`` (or ``model`` itself), or None."""
    for name in _BASES:
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module) and _layers(inner) is not None:
            return inner
    if _layers(model) is not None:
        return model
    return None


def _layers(base):
    """The transformer layers: ``layers`` (transformers 5) or ``encoder.layer`` (transformers 4); None if absent."""
    if not hasattr(getattr(base, "embeddings", None), "position_embeddings"):
        return None
    if isinstance(getattr(base, "layers", None), nn.ModuleList):
        return base.layers
    encoder = getattr(base, "encoder", None)
    return encoder.layer if isinstance(getattr(encoder, "layer", None), nn.ModuleList) else None


def _block(layer, i: int) -> BlockView:
    att = layer.attention
    if all(hasattr(att, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):        # transformers 5
        q, k, v, o = att.q_proj, att.k_proj, att.v_proj, att.o_proj
        heads = int(getattr(att, "num_attention_heads", 0) or att.config.num_attention_heads)
    elif hasattr(att, "attention") and hasattr(att.attention, "query"):                # transformers 4
        inner = att.attention
        q, k, v, o = inner.query, inner.key, inner.value, att.output.dense
        heads = int(inner.num_attention_heads)
    else:
        raise TypeError(f"layer {i}: attention {type(att).__name__} has neither q_proj/k_proj/v_proj/o_proj nor "
                        f"attention.query/key/value: not a ViT attention layout this package knows")
    head_dim = q.out_features // heads
    return BlockView(module=att, num_heads=heads, scale=head_dim ** -0.5, q=(q, slice(None)), k=(k, slice(None)),
                     v=(v, slice(None)), proj=o, q_norm=nn.Identity(), k_norm=nn.Identity())


def view(model, need_pos: bool = True) -> ViTView:
    base = _base(model) if type(model).__module__.startswith("transformers.") else None
    if base is None:
        raise TypeError(f"model must be a Hugging Face ViT or DeiT (ViTModel, ViTForImageClassification, DeiTModel, "
                        f"...), got {type(model).__module__}.{type(model).__name__}")
    emb = base.embeddings
    pe = emb.patch_embeddings
    img = pe.image_size if isinstance(pe.image_size, (tuple, list)) else (pe.image_size, pe.image_size)
    patch = pe.patch_size if isinstance(pe.patch_size, (tuple, list)) else (pe.patch_size, pe.patch_size)
    grid = (int(img[0]) // int(patch[0]), int(img[1]) // int(patch[1]))
    prefix = 2 if hasattr(emb, "distillation_token") else 1
    blocks = [_block(layer, i) for i, layer in enumerate(_layers(base))]
    dim = int(base.config.hidden_size)
    heads = blocks[0].num_heads if blocks else 1
    v = ViTView(model=model, grid=grid, dim=dim, heads=heads, head_dim=dim // heads, prefix=prefix,
                pos=emb.position_embeddings, pos_offset=prefix, blocks=blocks,
                run=lambda images: base(pixel_values=images),
                input_shape=(int(base.config.num_channels), int(img[0]), int(img[1])))
    return check_view(v, need_pos)


class HFClassifier(nn.Module):
    """A Hugging Face image classifier whose forward takes images and returns logits, like every other model the
    training loop trains; ``hf`` is the transformers model (what the init and the maps see)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, images):
        return self.hf(pixel_values=images).logits


def hf_config(name: str, kwargs: dict):
    """A transformers ViT/DeiT config: "vit"/"deit" with ``kwargs``, or a local config.json (or a folder with one)
    with ``kwargs`` set on it. No download. Errors are one-line ValueErrors."""
    try:
        import transformers
    except ImportError:
        raise ValueError("--model hf:<name> needs the transformers package (pip install transformers)") from None
    from pathlib import Path
    if name in _BASES:
        cls = transformers.ViTConfig if name == "vit" else transformers.DeiTConfig
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--model hf:{name}: {e}") from None
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"--model hf:{name} is neither {' nor '.join(_BASES)} nor a config.json (no download is "
                         f"made): use hf:vit, hf:deit or hf:<folder with config.json>")
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path.parent), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises assorted errors for an unreadable config
        raise ValueError(f"--model hf:{name}: transformers could not read {path} ({type(e).__name__}): pass a ViT "
                         f"or DeiT config.json") from None
    if cfg.model_type not in _BASES:
        raise ValueError(f"--model hf:{name} is a {cfg.model_type!r} config: use a ViT or DeiT config")
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    return cfg


def _claims(name: str) -> bool:
    from pathlib import Path
    return name in _BASES or Path(name).is_dir() or Path(name).is_file()


def build(r: BuildRequest) -> HFClassifier:
    import transformers
    kw = {**r.model_kwargs, **given_keywords(SOURCE, r)}
    cfg = hf_config(r.name, kw)
    cls = transformers.ViTForImageClassification if cfg.model_type == "vit" else \
        transformers.DeiTForImageClassification
    try:
        return HFClassifier(cls(cfg))
    except (ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise ValueError(f"transformers could not create {cls.__name__} with {kw} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None


def check(r: BuildRequest) -> None:
    cfg = hf_config(r.name, {})
    dim = r.flags.get("dim", r.model_kwargs.get("hidden_size", cfg.hidden_size))
    heads = r.flags.get("num_heads", r.model_kwargs.get("num_attention_heads", cfg.num_attention_heads))
    for key, value in (("hidden_size", dim), ("num_attention_heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--model-kwargs {key}={value!r} must be a positive integer")
    heads_divide(dim, heads, "--dim", "--num-heads")


SOURCE = ModelSource(
    spec="hf", prefixed=True, build=build, check=check, unwrap=lambda m: m.hf, claims=_claims,
    explain=lambda name: f"--model hf:{name} is neither {' nor '.join(_BASES)} nor a config.json (no download is "
                         f"made): use hf:vit, hf:deit or hf:<folder with config.json>",
    flags=("dim", "depth", "num_heads", "mlp_dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "hidden_size", "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
              "mlp_dim": "intermediate_size", "patch_size": "patch_size", "num_classes": "num_labels",
              "image_size": "image_size", "channels": "num_channels"},
    defaults={"kernel_size": 3}, parameters=parameter_estimate,
    describe="hf:<vit, deit or a config.json / folder with one>: a Hugging Face ViTForImageClassification or "
             "DeiTForImageClassification built from its config, no download (DeiT starts its position embedding at "
             "zero: the impulse and official inits refuse it)",
    examples=("hf:vit", "hf:deit"))


FAMILY = standard_family("hf_vit", NAME, matches, view, source=SOURCE, grid_of=lambda m: view(m, False).grid)
