"""Hugging Face ``transformers`` ViTs (``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``,
``DeiTForImageClassification[WithTeacher]``) as a ``ViTView``: the same structured init as timm's ViT.

Both module layouts are read: ``layers[i].attention.{q,k,v,o}_proj`` (transformers 5) and
``encoder.layer[i].attention.attention.{query,key,value}`` with ``attention.output.dense`` (transformers 4).
The position embedding has rows for the class (and DeiT's distillation) token, which the fit drops.
"""
from __future__ import annotations

import torch.nn as nn

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


def _family():
    from .standard_apply import standard_family
    return standard_family("hf_vit", NAME, matches, view)


FAMILY = _family()
