"""torchvision's Swin Transformer (``torchvision.models.swin_t`` and friends): the impulse prior through each window
attention's relative position bias table, as for timm's Swin (``timm_swin``: the same bias layer, window order and
scatter onto the grid, and the same table of init settings).

v1 (``ShiftedWindowAttention``): the table ((2h − 1)(2w − 1), heads) is indexed by query − key coordinates through
``relative_position_index``, as timm's, so ``timm_swin.WindowBias`` writes it. Strategies without a window-bias
handler but with a query/key one that needs no pseudo-input (``mimetic``, ``random``) act on the window attention's
query/key rows of ``qkv``.

The token grid: torchvision's modules do not know the image size (the shifted-window mask is built inside the
functional ``shifted_window_attention`` from each input, and a grid the window does not tile is padded). The
builder of ``--model tv:<name>`` records the image size it was built for on the model as the plain attribute
``impulse_attn_image_size`` (H, W) (not a buffer: the state dict stays torchvision's); a model built otherwise
takes it from the ``images`` given to ``init_``/``attention_maps`` (``init_`` then records it), or from the user
setting that attribute. A window that does not tile every stage's grid is refused: torchvision pads such a grid
(also one smaller than the window), and the padded keys take attention mass that no bias accounts for.

v2 (``swin_v2_t``: ``ShiftedWindowAttentionV2``): there is no table. The bias is 16·sigmoid(cpb_mlp(log-spaced
offsets)), a small MLP shared across offsets, bounded to (0, 16) and written only through the MLP's weights, so
the impulse logits cannot be written exactly; and its cosine attention normalizes queries and keys and multiplies
them by a learned logit scale, so query/key inits (fitted or mimetic) do not set its maps. What works: its maps
(``attention_maps``, with the cosine logits and the continuous bias as its forward computes them), the prior on
data and ``inspect``, and training from its own init (``--init default``); every other init is refused in one line.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import heads_divide
from ..init.registry import Strategy, get_strategy
from .base import Family, InitReport, Probe, capture_inputs, register_family
from .on_data import logit_share
from .source import BuildRequest, ModelSource
from .on_data import with_quality
from .timm_swin import FIT_DEFAULTS, apply_window_strategy, scatter_windows, window_index, window_quality
from .tv_vit import (build_class, builds, check_channels, describe_name, explain, is_torchvision, known_keywords,
                     torchvision_models)
from .view import BlockView

NAME = "torchvision Swin Transformer"
#: The model attribute holding the (H, W) image size its token grid is read for.
IMAGE_SIZE = "impulse_attn_image_size"
#: torchvision's shifted-window mask value between regions the cyclic shift brings together.
MASK = -100.0


def _classes():
    return torchvision_models("swin_transformer")


def matches(model) -> bool:
    return is_torchvision(model, "SwinTransformer", "swin_transformer")


@dataclass
class SwinBlock:
    """One block as the window-bias code reads it: its attention (``attn``), the token grid of its stage
    (``input_resolution``), and the window and cyclic shift that ``shifted_window_attention`` uses on that grid
    (the shift is dropped along a side the window covers, as torchvision does)."""

    block: nn.Module
    attn: nn.Module
    input_resolution: Tuple[int, int]
    window_size: Tuple[int, int]
    shift_size: Tuple[int, int]
    stage: int

    @property
    def v2(self) -> bool:
        return isinstance(self.attn, _classes().ShiftedWindowAttentionV2)


def is_v2(model) -> bool:
    sw = _classes()
    return any(isinstance(m, sw.ShiftedWindowAttentionV2) for m in model.modules())


def image_size(model, images: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """The (H, W) the model's grid is read for: the images' when given, else the recorded one, else a ValueError."""
    if images is not None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (batch, 3, H, W) for a {NAME}, got {tuple(images.shape)}")
        return int(images.shape[-2]), int(images.shape[-1])
    size = getattr(model, IMAGE_SIZE, None)
    if size is None:
        raise ValueError(f"the token grid of this {NAME} is unknown (torchvision's modules run on any image size): "
                         f"pass images, or set model.{IMAGE_SIZE} = (H, W) (--model tv:<name> records it)")
    return int(size[0]), int(size[1])


def _stem_grid(model, size: Tuple[int, int]) -> Tuple[int, int]:
    conv = model.features[0][0]
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"the model's patch embedding is a {type(conv).__name__}, not torchvision's Conv2d stem")
    return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(size, conv.padding, conv.kernel_size, conv.stride))


def stage_grids(model, size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Each stage's token grid for images of ``size``: the patch grid, then halved (rounding up, as torchvision's
    patch merging pads an odd side) at every patch merging."""
    sw = _classes()
    grid, out = _stem_grid(model, size), []
    for m in list(model.features)[1:]:
        if isinstance(m, (sw.PatchMerging, sw.PatchMergingV2)):
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        elif isinstance(m, nn.Sequential) and len(m) and all(isinstance(b, sw.SwinTransformerBlock) for b in m):
            out.append(grid)
        else:
            raise TypeError(f"model.features holds a {type(m).__name__}: not a torchvision Swin stage or patch "
                            f"merging")
    return out


def check_tiling(grids, window, where: str) -> None:
    """Refuse a window that does not tile every stage's grid: torchvision pads the grid to whole windows (also a
    grid smaller than the window), and the padded tokens, which no mask hides, take attention mass."""
    for stage, (h, w) in enumerate(grids):
        if h % window[0] or w % window[1]:
            raise ValueError(f"{where}: window {window[0]}x{window[1]} does not tile stage {stage}'s {h}x{w} token "
                             f"grid (torchvision would pad it and the padding takes attention mass): use a "
                             f"window_size that divides every stage's grid, fewer stages, or another image or patch "
                             f"size")


def blocks(model, size: Optional[Tuple[int, int]] = None) -> List[SwinBlock]:
    """Every block, stage by stage, on the grid of ``size`` (default: the recorded image size)."""
    sw = _classes()
    if sw is None or not isinstance(model, sw.SwinTransformer):
        raise TypeError(f"model must be a torchvision SwinTransformer, got {type(model).__module__}."
                        f"{type(model).__name__}")
    size = image_size(model) if size is None else size
    grids = stage_grids(model, size)
    stages = [m for m in list(model.features)[1:] if isinstance(m, nn.Sequential)]
    out = []
    for stage, (grid, seq) in enumerate(zip(grids, stages)):
        for b in seq:
            if not isinstance(b.attn, sw.ShiftedWindowAttention):
                raise TypeError(f"a stage {stage} block's attention is a {type(b.attn).__name__}, not torchvision's "
                                f"ShiftedWindowAttention")
            window = tuple(int(v) for v in b.attn.window_size)
            shift = tuple(0 if wv >= g else int(s) for wv, g, s in zip(window, grid, b.attn.shift_size))
            out.append(SwinBlock(b, b.attn, grid, window, shift, stage))
    if not out:
        raise ValueError("model has no Swin blocks")
    check_tiling(grids, out[0].window_size, f"a {NAME} on {size[0]}x{size[1]} images")
    return out


def input_shape(model):
    size = getattr(model, IMAGE_SIZE, None)
    return None if size is None else (3, int(size[0]), int(size[1]))


def grid_of(model) -> tuple:
    return stage_grids(model, image_size(model))[0]


# --- maps ---------------------------------------------------------------------------------------------------------
def shift_mask(grid, window, shift) -> Optional[torch.Tensor]:
    """(windows, A, A) the shifted-window mask as ``shifted_window_attention`` builds it (0 within a region, −100
    across), None for an unshifted block."""
    if not sum(shift):
        return None
    (gh, gw), (wh, ww), (sh, sw) = grid, window, shift
    mask = torch.zeros(gh, gw, dtype=torch.float64)
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    nw = (gh // wh) * (gw // ww)
    mask = mask.view(gh // wh, wh, gw // ww, ww).permute(0, 2, 1, 3).reshape(nw, wh * ww)
    diff = mask[:, None, :] - mask[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, MASK), torch.zeros_like(diff))


def _bias(b: SwinBlock) -> torch.Tensor:
    """(heads, A, A): the block's own relative position bias (v2: its continuous bias, 16·sigmoid(MLP))."""
    return b.attn.get_relative_position_bias()[0]


def _window_logits(b: SwinBlock, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the attention's input x (B, H, W, C): (content logits (B·windows, heads, A, A), the position bias, the
    logits with bias and shifted-window mask), as ``shifted_window_attention`` computes them."""
    a = b.attn
    batch, h, w, c = x.shape
    (wh, ww), (sh, sw) = b.window_size, b.shift_size
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    nw = (h // wh) * (w // ww)
    x = x.view(batch, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(batch * nw, wh * ww, c)
    heads, area = int(a.num_heads), wh * ww
    bias = a.qkv.bias
    if b.v2 and bias is not None:        # v2 drops the key bias in its forward
        bias = bias.clone()
        bias[c:2 * c] = 0
    qkv = F.linear(x, a.qkv.weight, bias).reshape(batch * nw, area, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    if b.v2:
        content = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        content = content * torch.clamp(a.logit_scale, max=math.log(100.0)).exp()
    else:
        content = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    pos = _bias(b).to(content)[None]
    logits = content + pos
    mask = shift_mask(b.input_resolution, b.window_size, b.shift_size)
    if mask is not None:
        mask = mask.to(logits)[None, :, None]
        logits = (logits.view(batch, nw, heads, area, area) + mask).view(-1, heads, area, area)
    return content, pos.expand_as(content), logits


@torch.no_grad()
def _data_logits(model, bl: List[SwinBlock], images: torch.Tensor) -> list:
    """Per block, on ``images`` (eval mode, restored): (its window logits with bias and mask, the bias share)."""
    captured = capture_inputs(model, [b.attn for b in bl], model.features, images, stop=True)
    out = []
    for b, x in zip(bl, captured):
        content, pos, logits = _window_logits(b, x)
        out.append((logits, logit_share(pos, content)))
    return out


def _scatter(b: SwinBlock, probs: torch.Tensor, batch: int) -> torch.Tensor:
    # the shared scatter builds the grid maps on the CPU, so the window maps go there first (a model on a GPU)
    return scatter_windows(b, probs.cpu(), batch)


@torch.no_grad()
def attention_maps(model, images: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Per block, its window attention maps placed on its stage's grid: (B, heads, N, N), zero between tokens of
    different windows. ``images=None``: the position bias alone with the shifted-window mask (B = 1), on the
    recorded image size's grid; ``images``: a forward pass's maps (eval mode, restored afterwards)."""
    bl = blocks(model, image_size(model, images))
    if images is not None:
        return [_scatter(b, logits.softmax(-1), images.shape[0]) for b, (logits, _) in
                zip(bl, _data_logits(model, bl, images))]
    out = []
    for b in bl:
        nw = window_index(b).shape[0]
        logits = _bias(b).detach().to(torch.float64)[None].expand(nw, -1, -1, -1)
        mask = shift_mask(b.input_resolution, b.window_size, b.shift_size)
        if mask is not None:
            logits = logits + mask.to(logits)[:, None]
        out.append(_scatter(b, logits.softmax(-1), 1))
    return out


def on_data(model, images: torch.Tensor, offsets) -> List[dict]:
    """Per block, on ``images``: argmax hit and target mass of its window maps (rows whose target is in the query's
    window and region), and the bias share of its logits (position bias against query·key content)."""
    bl = blocks(model, image_size(model, images))
    out = []
    for i, (b, (logits, share)) in enumerate(zip(bl, _data_logits(model, bl, images))):
        out.append(with_quality({"bias_share": share}, offsets, i,
                                lambda: _scatter(b, logits.softmax(-1), images.shape[0]), b.input_resolution,
                                window_quality))
    return out


# --- apply --------------------------------------------------------------------------------------------------------
def v2_refusal(init: str) -> str:
    return (f"init {init!r} does not apply to a torchvision Swin Transformer V2: its position bias is "
            f"16·sigmoid(cpb_mlp(offsets)), an MLP with no table to hold the impulse logits, and its cosine attention "
            f"normalizes queries and keys, so a query/key init does not set its maps; only init 'default' applies "
            f"(its maps and the prior on data are read as for v1)")


def _block_view(b: SwinBlock) -> BlockView:
    a = b.attn
    d = a.qkv.out_features // 3
    return BlockView(module=a, num_heads=int(a.num_heads), scale=(d // int(a.num_heads)) ** -0.5,
                     q=(a.qkv, slice(0, d)), k=(a.qkv, slice(d, 2 * d)), v=(a.qkv, slice(2 * d, 3 * d)), proj=a.proj,
                     q_norm=nn.Identity(), k_norm=nn.Identity())


def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
    start = time.perf_counter()
    if fit_kwargs:
        raise ValueError(f"fit_kwargs {sorted(fit_kwargs)} do not apply to a Swin Transformer (no query/key fit; "
                         f"the window-bias init takes options such as window_mass)")
    if kind == "":
        return InitReport(NAME, strategy.name, seed, kind, time.perf_counter() - start)
    if is_v2(model):
        raise ValueError(v2_refusal(strategy.name))
    size = image_size(model, images)
    bl = blocks(model, size)

    def maps():
        setattr(model, IMAGE_SIZE, size)
        return attention_maps(model)
    report = apply_window_strategy(NAME, strategy, kind, bl, _block_view, maps, seed=seed, kernel_size=kernel_size,
                                   fit_method=fit_method, fit_kwargs=fit_kwargs, options=options, start=start)
    setattr(model, IMAGE_SIZE, size)
    return report


def probe(model, offsets=None) -> Probe:
    """The blocks of the first stage, which share the full token grid (later stages run on merged patches)."""
    bl = blocks(model)
    grid = bl[0].input_resolution
    keep = [i for i, b in enumerate(bl) if b.stage == 0]
    offs = [torch.as_tensor(offsets[i]) if offsets and i < len(offsets) and offsets[i] is not None else None
            for i in keep]

    def first_stage(images=None):
        maps = attention_maps(model, images)
        return [maps[i] for i in keep]
    return Probe(grid, offs, first_stage, first_stage, "tv_swin")


# --- the command line -----------------------------------------------------------------------------------------
def _pair(v):
    return [v, v] if isinstance(v, int) and not isinstance(v, bool) else v


def _own(name: str) -> dict:
    """The builder's own SwinTransformer keywords (read from its meta-device model)."""
    m = describe_name(name).get("model")
    if m is None or not matches(m):
        return {}
    stages = [s for s in list(m.features)[1:] if isinstance(s, nn.Sequential)]
    first, last = stages[0][0], stages[-1][-1]
    merge = next(type(s) for s in list(m.features)[1:] if not isinstance(s, nn.Sequential)) if len(stages) > 1 \
        else _classes().PatchMerging
    conv = m.features[0][0]
    return {"patch_size": list(conv.kernel_size), "embed_dim": int(conv.out_channels),
            "depths": [len(s) for s in stages], "num_heads": [int(s[0].attn.num_heads) for s in stages],
            "window_size": list(first.attn.window_size), "mlp_ratio": first.mlp[0].out_features / conv.out_channels,
            "stochastic_depth_prob": float(last.stochastic_depth.p), "num_classes": int(m.head.out_features),
            "block": type(first), "downsample_layer": merge}


def _settings(r: BuildRequest) -> dict:
    """SwinTransformer's keywords: the builder's sizes, then --model-kwargs, then the flags' and the data's (those
    known; one that --model-kwargs contradicts is refused)."""
    given = known_keywords(SOURCE, r)
    kwargs = {**_own(r.name), **r.model_kwargs, **given}
    for key in ("patch_size", "window_size"):
        if key in kwargs:
            kwargs[key] = _pair(kwargs[key])
    return kwargs


def build(r: BuildRequest):
    model = build_class(_classes().SwinTransformer, r.name, _settings(r))
    if r.image_size is not None:
        setattr(model, IMAGE_SIZE, (int(r.image_size), int(r.image_size)))
    return model


def check(r: BuildRequest) -> None:
    check_channels(r, "SwinTransformer")
    kw = _settings(r)
    depths, heads = kw.get("depths"), kw.get("num_heads")
    if isinstance(depths, (tuple, list)) and isinstance(heads, (tuple, list)) and len(depths) != len(heads):
        raise ValueError(f"--model-kwargs gives depths for {len(depths)} stages and num_heads for {len(heads)}: give "
                         f"one head count per stage")
    dim = kw.get("embed_dim")
    if isinstance(dim, int) and isinstance(heads, (tuple, list)):
        for stage, h in enumerate(heads):       # a stage's width doubles at each patch merging
            if isinstance(h, int):
                heads_divide(dim << stage, h, f"stage {stage}'s width (embed_dim {dim}·{2 ** stage})",
                             "its num_heads")
    init = getattr(r.config, "init", None)
    if isinstance(kw.get("block"), type) and issubclass(kw["block"], _classes().SwinTransformerBlockV2) and \
            init is not None and not get_strategy(init).keeps_model:
        raise ValueError(f"--model tv:{r.name}: {v2_refusal(init)}")
    patch, window = kw.get("patch_size"), kw.get("window_size")
    if r.image_size is None or not isinstance(depths, (tuple, list)) or not all(
            isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v) for v in (patch,
                                                                                                       window)):
        return
    grid = (r.image_size // patch[0], r.image_size // patch[1])
    grids = [grid]
    for _ in range(len(depths) - 1):
        grids.append(((grids[-1][0] + 1) // 2, (grids[-1][1] + 1) // 2))
    check_tiling(grids, window, f"--model tv:{r.name} on {r.image_size}x{r.image_size} images")


SOURCE = ModelSource(
    spec="tv", prefixed=True, build=build, check=check,
    claims=lambda name: builds(name, matches), explain=explain,
    flags=("dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "embed_dim", "patch_size": "patch_size", "num_classes": "num_classes"},
    defaults={"kernel_size": 3},
    describe="tv:<swin name>: a torchvision SwinTransformer (tv:swin_t; v2, tv:swin_v2_t, with --init default only), "
             "whose depths, heads and window go in --model-kwargs, e.g. 'depths=(2,2);num_heads=(2,4);window_size=4'",
    examples=("tv:swin_t",))

FAMILY = register_family(Family("tv_swin", NAME, matches, ("window_bias", "qk"), apply, attention_maps,
                                pseudo_input=False, on_data=on_data, input_shape=input_shape, source=SOURCE,
                                probe=probe, fit_defaults=FIT_DEFAULTS, grid_of=grid_of))
