"""timm's ``VisionTransformer`` family as a ``ViTView`` (fused ``qkv`` per block, ``pos_embed``, prefix tokens)."""
from __future__ import annotations

from .._validate import heads_divide
from . import timm_registry
from .standard_apply import standard_family
from .source import BuildRequest, ModelSource, given_keywords
from .standard_vit import parameter_estimate
from .view import BlockView, ViTView, check_view

NAME = "timm ViT"


def _timm_classes():
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency of the setup
        return None, None
    return VisionTransformer, Attention


def matches(model) -> bool:
    vit, _ = _timm_classes()
    return vit is not None and isinstance(model, vit)


def view(model, need_pos: bool = True) -> ViTView:
    """Check that ``model`` is a timm ViT whose tokens are a fixed patch grid; return its view."""
    vit_cls, attn_cls = _timm_classes()
    if vit_cls is None or not isinstance(model, vit_cls):
        raise TypeError(f"model must be a timm VisionTransformer (timm.models.vision_transformer), got "
                        f"{type(model).__module__}.{type(model).__name__}")
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("model was built with dynamic_img_size=True: its token grid (and resampled pos_embed) "
                         "changes with every input size, while the impulse maps are fitted for one grid")
    grid = getattr(model.patch_embed, "grid_size", None)
    if grid is None or len(grid) != 2:
        raise ValueError("model.patch_embed has no fixed grid_size (built without img_size?): the token grid is "
                         "unknown")
    grid = (int(grid[0]), int(grid[1]))
    n = grid[0] * grid[1]
    if getattr(model.patch_embed, "num_patches", n) != n:
        raise ValueError(f"model.patch_embed.num_patches {model.patch_embed.num_patches} != grid "
                         f"{grid[0]}x{grid[1]}: tokens are not a plain patch grid")
    dim = int(model.embed_dim)
    blocks = []
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, attn_cls):
            raise TypeError(f"block {i} has no standard timm Attention (got {type(attn).__name__}); blocks with "
                            f"a fused or parallel attention layout are not supported")
        if attn.qkv.in_features != dim or attn.qkv.out_features != 3 * dim:
            raise ValueError(f"block {i}: qkv maps {attn.qkv.in_features} -> {attn.qkv.out_features} with "
                             f"{attn.num_heads} heads; init_ needs qkv: D -> 3·D with D = heads · head_dim "
                             f"(D = {dim})")
        blocks.append(BlockView(module=attn, num_heads=int(attn.num_heads), scale=float(attn.scale),
                                q=(attn.qkv, slice(0, dim)), k=(attn.qkv, slice(dim, 2 * dim)),
                                v=(attn.qkv, slice(2 * dim, 3 * dim)), proj=attn.proj, q_norm=attn.q_norm,
                                k_norm=attn.k_norm))
    heads = blocks[0].num_heads if blocks else 1
    prefix = int(model.num_prefix_tokens)
    v = ViTView(model=model, grid=grid, dim=dim, heads=heads, head_dim=dim // heads, prefix=prefix,
                pos=model.pos_embed, pos_offset=0 if model.no_embed_class else prefix, blocks=blocks,
                run=model.forward_features,
                input_shape=(int(model.patch_embed.proj.in_channels), *(int(v) for v in model.patch_embed.img_size)))
    return check_view(v, need_pos)


def grid_of(model) -> tuple:
    return tuple(int(g) for g in model.patch_embed.grid_size)


def mlp_ratio(dim: int, mlp_dim: int) -> float:
    """The ``mlp_ratio`` timm sizes an MLP of ``mlp_dim`` with (``int(dim * mlp_ratio)``)."""
    ratio = mlp_dim / dim
    return ratio if int(dim * ratio) == mlp_dim else (mlp_dim + 0.5) / dim


def build(r: BuildRequest):
    kw = given_keywords(SOURCE, r)
    if "mlp_dim" in r.flags:
        width = kw.get("embed_dim", r.model_kwargs.get("embed_dim", _own(r.name).get("embed_dim")))
        ratio = mlp_ratio(width, r.flags["mlp_dim"])
        if "mlp_ratio" in r.model_kwargs and r.model_kwargs["mlp_ratio"] != ratio:
            raise ValueError(f"--model-kwargs sets mlp_ratio={r.model_kwargs['mlp_ratio']!r} but --mlp-dim "
                             f"{r.flags['mlp_dim']} sets mlp_ratio={ratio!r}: give it once")
        kw["mlp_ratio"] = ratio
    model = timm_registry.create(r.name, **{**r.model_kwargs, **kw})
    if "mlp_dim" in r.flags and model.blocks[0].mlp.fc1.out_features != r.flags["mlp_dim"]:  # pragma: no cover
        raise ValueError(f"--mlp-dim {r.flags['mlp_dim']} cannot be expressed as a timm mlp_ratio of --dim: use a "
                         f"multiple of --dim")
    return model


def _own(name: str) -> dict:
    """The registered model's own sizes (its meta-device copy)."""
    m = timm_registry.describe(name).get("model")
    if m is None:
        return {}
    return {"embed_dim": int(m.embed_dim), "num_heads": int(m.blocks[0].attn.num_heads) if len(m.blocks) else 1}


def check(r: BuildRequest) -> None:
    own = _own(r.name)
    dim = r.flags.get("dim", r.model_kwargs.get("embed_dim", own.get("embed_dim")))
    heads = r.flags.get("num_heads", r.model_kwargs.get("num_heads", own.get("num_heads")))
    heads_divide(dim, heads, "--dim", "--num-heads")


SOURCE = ModelSource(
    spec="timm", prefixed=True, build=build, check=check,
    claims=lambda name: timm_registry.builds(name, matches), explain=timm_registry.explain,
    flags=("dim", "depth", "num_heads", "mlp_dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "patch_size": "patch_size",
              "num_classes": "num_classes", "image_size": "img_size", "channels": "in_chans"},
    defaults={"kernel_size": 3}, parameters=parameter_estimate,
    describe="timm:<name>: a timm VisionTransformer made by timm.create_model(name, pretrained=False), e.g. "
             "timm:vit_tiny_patch16_224",
    examples=("timm:vit_tiny_patch16_224",))


FAMILY = standard_family("timm_vit", NAME, matches, view, source=SOURCE, grid_of=grid_of)
