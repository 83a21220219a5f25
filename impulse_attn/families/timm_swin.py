"""timm's Swin Transformer (v1, ``timm.models.swin_transformer.SwinTransformer``): the impulse prior through each
window attention's relative position bias table (docs/families.md, "Swin").

Swin has no absolute position embedding (timm's default), so there is no pseudo-input for a query/key fit; but
inside a window the bias depends only on the key's offset from the query, so the table can hold an impulse logit
exactly: head h's bias is L at its offset and 0 elsewhere, with L set by the mass it should put on the target of
an interior query (``window_mass``, default in ``FIT_DEFAULTS``). Query/key weights are left as built (timm: truncated normal, std
0.02), so their logits start small next to L.

Window edges and shifted windows: attention never leaves a window, so a query whose target token lies in another
window (its offset points past the window's edge) has a flat bias and attends uniformly within its window (up to
the small query/key term); in a shifted-window block (every second block) the windows are offset by half a window
and the regions that the cyclic shift brings together are masked apart (−100), so there the target must also be in
the query's own region. With k = 3 in a 7×7 window, 6/7 of the rows in each direction keep their target.

Strategies without a window-bias handler but with a query/key one that needs no pseudo-input (``mimetic``,
``random``) act on the window attention's query/key rows of ``qkv``.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from ..init.protocol import WindowRequest
from ..init.registry import Strategy
from .adapters import BlockQKLayer
from . import timm_registry
from .base import Family, InitReport, Probe, capture_inputs, offset_quality, register_family
from .on_data import with_quality
from .source import BuildRequest, ModelSource, given_keywords
from .view import BlockView

NAME = "timm Swin Transformer"
#: The window-bias families' one table of init settings (timm's and torchvision's Swin), read by the strategies
#: (``WindowRequest.defaults``), ``--help`` and docs/families.md: the mass the impulse bias puts on the target key of
#: an interior query, chosen on val/ among 0.3, 0.5, 0.7 (docs/RESULTS.md, "Every family": 34.2, 35.6, 35.9 at 100
#: images per class, seed 0).
FIT_DEFAULTS = {"window_mass": 0.7}


def _classes():
    try:
        from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention
    except ImportError:  # pragma: no cover
        return None
    return SwinTransformer, SwinTransformerBlock, WindowAttention


def matches(model) -> bool:
    c = _classes()
    return c is not None and isinstance(model, c[0])


def blocks(model) -> List[nn.Module]:
    """Every SwinTransformerBlock, stage by stage."""
    c = _classes()
    if c is None or not isinstance(model, c[0]):
        raise TypeError(f"model must be a timm SwinTransformer, got {type(model).__module__}.{type(model).__name__}")
    out = [m for m in model.modules() if isinstance(m, c[1])]
    if not out:
        raise ValueError("model has no Swin blocks")
    for i, b in enumerate(out):
        if not isinstance(b.attn, c[2]):
            raise TypeError(f"block {i}: attention {type(b.attn).__name__} is not timm's WindowAttention")
    return out


class WindowBias:
    """``WindowBiasLayer`` over one Swin block's relative position bias table."""

    def __init__(self, block):
        self.block = block
        self.offsets: Optional[torch.Tensor] = None

    def window_request(self) -> WindowRequest:
        b = self.block
        window, grid = tuple(int(w) for w in b.window_size), tuple(int(r) for r in b.input_resolution)
        check_windows(grid, window, 1, "the model")
        return WindowRequest(int(b.attn.num_heads), window, grid, FIT_DEFAULTS)

    @torch.no_grad()
    def load_window_bias(self, logits: torch.Tensor, offsets: Optional[torch.Tensor] = None) -> None:
        table = self.block.attn.relative_position_bias_table
        # timm indexes the table by query − key coordinates; the protocol's logits are by key − query offset.
        flipped = logits.flip(1, 2).permute(1, 2, 0).reshape(table.shape)
        table.copy_(flipped.to(table))
        self.offsets = None if offsets is None else offsets.detach().clone()


def _block_view(block) -> BlockView:
    a = block.attn
    d = a.qkv.out_features // 3
    return BlockView(module=a, num_heads=int(a.num_heads), scale=float(a.scale), q=(a.qkv, slice(0, d)),
                     k=(a.qkv, slice(d, 2 * d)), v=(a.qkv, slice(2 * d, 3 * d)), proj=a.proj, q_norm=nn.Identity(),
                     k_norm=nn.Identity())


# --- maps ----------------------------------------------------------------------------------------------------
def window_index(block) -> torch.Tensor:
    """(windows, A): the grid token index at each window position of ``block`` (−1 for padding), after its
    cyclic shift, in timm's window order."""
    from timm.models.swin_transformer import window_partition
    h, w = (int(r) for r in block.input_resolution)
    idx = torch.arange(h * w, dtype=torch.float64).view(1, h, w, 1)
    s = tuple(int(v) for v in block.shift_size)
    if any(s):
        idx = torch.roll(idx, shifts=(-s[0], -s[1]), dims=(1, 2))
    wh, ww = (int(v) for v in block.window_size)
    ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
    idx = nn.functional.pad(idx, (0, 0, 0, pw, 0, ph), value=-1.0)
    return window_partition(idx, (wh, ww)).reshape(-1, wh * ww).long()


def _rel_bias(block) -> torch.Tensor:
    a = block.attn
    area = a.window_area
    return a.relative_position_bias_table[a.relative_position_index.view(-1)].view(area, area, -1).permute(2, 0, 1)


def scatter_windows(block, probs: torch.Tensor, batch: int) -> torch.Tensor:
    """Window maps (batch·windows, heads, A, A) scattered into (batch, heads, N, N) on the block's grid."""
    index = window_index(block).to(probs.device)                  # (W, A)
    nw, area = index.shape
    h, w = (int(r) for r in block.input_resolution)
    heads = probs.shape[1]
    probs = probs.reshape(batch, nw, heads, area, area)
    out = torch.zeros(batch, heads, h * w, h * w, dtype=probs.dtype, device=probs.device)
    for win in range(nw):
        keep = index[win] >= 0
        tok = index[win][keep]
        p = probs[:, win][:, :, keep][:, :, :, keep]
        out[:, :, tok[:, None], tok[None, :]] = p
    return out


@torch.no_grad()
def attention_maps(model, images: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Per Swin block, its window attention maps placed on the block's own token grid: (B, heads, N, N) with
    N = H·W of that stage, zero between tokens of different windows.

    ``images=None``: the maps of the position bias alone (no content; B = 1), with the shifted-window mask:
    what the impulse init sets. ``images``: the maps of a forward pass (eval mode, restored afterwards)."""
    bl = blocks(model)
    if images is None:
        out = []
        for b in bl:
            logits = _rel_bias(b).to(torch.float64)[None]        # (1, heads, A, A)
            nw = window_index(b).shape[0]
            logits = logits.expand(nw, -1, -1, -1)
            mask = getattr(b, "attn_mask", None)
            if mask is not None:
                logits = logits + mask.to(torch.float64)[:, None]
            out.append(scatter_windows(b, logits.softmax(-1), 1))
        return out
    return [scatter_windows(b, logits.softmax(-1), images.shape[0])
            for b, (logits, _) in zip(bl, _data_logits(model, images))]


@torch.no_grad()
def _data_logits(model, images: torch.Tensor) -> list:
    """Per block, on ``images`` (eval mode, restored): (its window logits (B·windows, heads, A, A) with bias and
    shifted-window mask, as its forward, and the bias share of their variance over the windows' unmasked
    entries)."""
    from .on_data import logit_share
    bl = blocks(model)
    captured = capture_inputs(model, [b.attn for b in bl], model.forward_features, images,
                              lambda args, kwargs: (args[0].detach(),
                                                    kwargs.get("mask", args[1] if len(args) > 1 else None)))
    out = []
    for b, (x, mask) in zip(bl, captured):
        a = b.attn
        bw, n, c = x.shape
        qkv = a.qkv(x).reshape(bw, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        content = (qkv[0] * a.scale) @ qkv[1].transpose(-2, -1)
        bias = _rel_bias(b)[None].expand_as(content)
        share = logit_share(bias, content)
        logits = content + bias
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.view(-1, nw, a.num_heads, n, n) + mask[None, :, None]).view(-1, a.num_heads, n, n)
        out.append((logits, share))
    return out


def on_data(model, images: torch.Tensor, offsets) -> List[dict]:
    """Per block, on ``images``: argmax hit and target mass of its window maps (rows whose target is in the
    query's window), and the bias share of its logits (relative position bias against query·key content)."""
    bl = blocks(model)
    out = []
    for i, (b, (logits, share)) in enumerate(zip(bl, _data_logits(model, images))):
        out.append(with_quality({"bias_share": share}, offsets, i,
                                lambda: scatter_windows(b, logits.softmax(-1), images.shape[0]),
                                tuple(int(r) for r in b.input_resolution), window_quality))
    return out


def input_shape(model) -> tuple:
    pe = model.patch_embed
    return (int(pe.proj.in_channels), *(int(v) for v in pe.img_size))


def window_quality(maps: torch.Tensor, offsets: torch.Tensor, grid) -> dict:
    """Over the rows whose target key is in the query's window: a target in another window (or in a region the
    shifted-window mask separates) has weight 0 (or e^-100)."""
    return offset_quality(maps, offsets, grid, keep=lambda m, t: t > 1e-20, share=lambda m, t: t)


# --- apply ---------------------------------------------------------------------------------------------------
def apply_window_strategy(label: str, strategy: Strategy, kind: str, bl: list, block_view: Callable,
                          maps: Callable[[], List[torch.Tensor]], *, seed: int, kernel_size: Optional[int],
                          fit_method: Optional[str], fit_kwargs: Optional[dict], options: Optional[dict],
                          start: float) -> InitReport:
    """A strategy on window-attention blocks (timm's or torchvision's Swin, whose ``bl`` expose ``attn``,
    ``window_size`` and ``input_resolution``): its window_bias handler on the relative position bias tables, or its
    qk handler on the blocks' query/key rows (``block_view(block)`` -> BlockView); ``maps()`` the bias maps after."""
    k = 3 if kernel_size is None else kernel_size
    gen = torch.Generator().manual_seed(seed)
    if fit_kwargs:
        raise ValueError(f"fit_kwargs {sorted(fit_kwargs)} do not apply to a {label} (no query/key fit; the "
                         f"window-bias init takes options such as window_mass)")
    if kind == "window_bias":
        if fit_method is not None:
            raise ValueError(f"fit_method {fit_method!r} does not apply to a {label}'s window-bias init (it sets the "
                             f"bias table exactly; its option is window_mass)")
        layers = [WindowBias(b) for b in bl]
        src = strategy.window_bias(layers, [layer.window_request() for layer in layers], gen, seed=seed,
                                   kernel_size=k, options=options)
        rows = [dict(s, **window_quality(m, layer.offsets, b.input_resolution)) if layer.offsets is not None else dict(s)
                for s, m, layer, b in zip(src, maps(), layers, bl)]
        return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start, rows, src)
    if options:
        raise ValueError(f"options {sorted(options)} do not apply to init {strategy.name!r} on a {label}")
    layers = [BlockQKLayer(block_view(b), tuple(int(v) for v in b.window_size), None) for b in bl]
    requests = [layer.qk_request(with_pseudo_input=False) for layer in layers]
    src = strategy.qk(layers, requests, gen, seed=seed, fit_method=strategy.check_fit_method(fit_method),
                      kernel_size=k, fit_kwargs=None)
    return InitReport(label, strategy.name, seed, kind, time.perf_counter() - start,
                      [{"offsets": layer.offsets} for layer in layers], src)


def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
    start = time.perf_counter()
    bl = blocks(model)
    if kind == "":
        return InitReport(NAME, strategy.name, seed, kind, time.perf_counter() - start)
    return apply_window_strategy(NAME, strategy, kind, bl, _block_view, lambda: attention_maps(model), seed=seed,
                                 kernel_size=kernel_size, fit_method=fit_method, fit_kwargs=fit_kwargs,
                                 options=options, start=start)


def probe(model, offsets=None) -> Probe:
    """The blocks of the first stage, which share the full token grid (later stages run on merged patches)."""
    bl = blocks(model)
    grid = tuple(int(r) for r in bl[0].input_resolution)
    keep = [i for i, b in enumerate(bl) if tuple(int(r) for r in b.input_resolution) == grid]
    offs = [torch.as_tensor(offsets[i]) if offsets and i < len(offsets) and offsets[i] is not None else None
            for i in keep]
    return Probe(grid, offs, lambda x: [attention_maps(model, x)[i] for i in keep],
                 lambda: [attention_maps(model)[i] for i in keep], "timm_swin")


def check_windows(grid, window, stages: int, where: str) -> None:
    """Refuse windows that do not tile each stage's token grid: timm pads such a grid, and the padded keys take
    attention mass (rows then sum to as little as 0.15), which no impulse bias can account for. (A stage whose grid
    is no larger than the window attends over the whole grid, as timm does.)"""
    h, w = grid
    for stage in range(stages):
        res = (h >> stage, w >> stage)
        win = tuple(min(r, v) for r, v in zip(res, window))
        if res[0] % win[0] or res[1] % win[1]:
            raise ValueError(f"{where}: window {window[0]}x{window[1]} does not tile stage {stage}'s "
                             f"{res[0]}x{res[1]} token grid (timm would pad it and the padding takes attention mass): "
                             f"use a window_size that divides {res[0]} and {res[1]}, or another image or patch size")


def _own(name: str) -> dict:
    m = timm_registry.describe(name).get("model")
    if m is None:
        return {}
    first = m.layers[0].blocks[0]
    return {"patch_size": int(m.patch_embed.patch_size[0]), "window": tuple(int(v) for v in first.window_size),
            "stages": len(m.layers)}


def check(r: BuildRequest) -> None:
    own = _own(r.name)
    patch = r.flags.get("patch_size", r.model_kwargs.get("patch_size", own.get("patch_size")))
    window = r.model_kwargs.get("window_size", own.get("window"))
    depths = r.model_kwargs.get("depths")
    heads = r.model_kwargs.get("num_heads")
    if depths is not None and heads is not None and isinstance(depths, (tuple, list)) and \
            isinstance(heads, (tuple, list)) and len(depths) != len(heads):
        raise ValueError(f"--model-kwargs gives depths for {len(depths)} stages and num_heads for {len(heads)}: give "
                         f"one head count per stage")
    if isinstance(window, int):
        window = (window, window)
    if patch and window and isinstance(patch, int):
        stages = len(depths) if isinstance(depths, (tuple, list)) else own.get("stages", 1)
        check_windows((r.image_size // patch, r.image_size // patch), window, stages, f"--model timm:{r.name}")


def build(r: BuildRequest):
    return timm_registry.create(r.name, **{**r.model_kwargs, **given_keywords(SOURCE, r)})


SOURCE = ModelSource(
    spec="timm", prefixed=True, build=build, check=check,
    claims=lambda name: timm_registry.builds(name, matches), explain=timm_registry.explain,
    flags=("dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "embed_dim", "patch_size": "patch_size", "num_classes": "num_classes",
              "image_size": "img_size", "channels": "in_chans"},
    defaults={"kernel_size": 3},
    describe="timm:<swin name>: a timm SwinTransformer (v1), whose depths, heads and window per stage go in "
             "--model-kwargs, e.g. 'depths=(2,2);num_heads=(2,4);window_size=4'",
    examples=("timm:swin_tiny_patch4_window7_224",))

FAMILY = register_family(Family("timm_swin", NAME, matches, ("window_bias", "qk"), apply, attention_maps,
                                pseudo_input=False, on_data=on_data, input_shape=input_shape, source=SOURCE,
                                probe=probe, fit_defaults=FIT_DEFAULTS))
