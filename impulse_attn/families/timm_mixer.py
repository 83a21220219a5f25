"""timm's MLP-Mixer (``timm.models.mlp_mixer.MlpMixer`` with ``MixerBlock``s): the impulse prior through each
block's token-mixing MLP, a bank of shifts over its hidden units (``filters.token_mixing``; docs/families.md,
"MLP-Mixer"). Query/key strategies do not apply: a Mixer has no attention."""
from __future__ import annotations

import math
import time
from typing import List, Optional

import torch
import torch.nn as nn

from ..init.protocol import TokenMixRequest
from ..init.registry import Strategy
from . import timm_registry
from .base import Family, InitReport, capture_inputs, offset_quality, register_family
from .on_data import with_quality
from .source import BuildRequest, ModelSource, given_keywords

NAME = "timm MLP-Mixer"
#: The MLP-Mixer's one table of init settings, read by the strategies (``TokenMixRequest.defaults``), ``--help`` and
#: docs/families.md: the gain of the shift bank, chosen on val/ among 0.5, 1, 2 (docs/RESULTS.md, "Every family":
#: 44.0, 44.4, 47.1 at 100 images per class, seed 0).
FIT_DEFAULTS = {"gain": 2.0}


def _classes():
    try:
        from timm.models.mlp_mixer import MixerBlock, MlpMixer
    except ImportError:  # pragma: no cover
        return None
    return MlpMixer, MixerBlock


def matches(model) -> bool:
    c = _classes()
    return c is not None and isinstance(model, c[0]) and all(isinstance(b, c[1]) for b in model.blocks)


def grid_of(model) -> tuple:
    return tuple(int(g) for g in model.stem.grid_size)


def blocks(model) -> List[nn.Module]:
    c = _classes()
    if c is None or not isinstance(model, c[0]):
        raise TypeError(f"model must be a timm MlpMixer, got {type(model).__module__}.{type(model).__name__}")
    bad = [type(b).__name__ for b in model.blocks if not isinstance(b, c[1])]
    if bad:
        raise TypeError(f"model's blocks are {bad[0]}, not MixerBlock (ResMLP/gMLP token mixing is not an MLP over "
                        f"tokens with one hidden layer)")
    for i, b in enumerate(model.blocks):
        act = getattr(b.mlp_tokens, "act", None)
        if not isinstance(act, nn.GELU):
            raise TypeError(f"block {i}: token MLP activation {type(act).__name__}; the shift bank is set up for "
                            f"GELU")
    return list(model.blocks)


class TokenMix:
    """``TokenMixLayer`` over one MixerBlock's token MLP."""

    def __init__(self, block, grid):
        self.block, self.grid = block, grid
        self.offsets: Optional[torch.Tensor] = None

    def token_mix_request(self) -> TokenMixRequest:
        fc1 = self.block.mlp_tokens.fc1
        n = self.grid[0] * self.grid[1]
        if fc1.in_features != n:
            raise ValueError(f"the token MLP reads {fc1.in_features} tokens, the grid has {n}")
        return TokenMixRequest(self.grid, int(fc1.out_features), "gelu", FIT_DEFAULTS)

    @torch.no_grad()
    def load_token_mix(self, w1, b1, w2, b2, offsets=None) -> None:
        m = self.block.mlp_tokens
        for lin, w, b in ((m.fc1, w1, b1), (m.fc2, w2, b2)):
            lin.weight.copy_(w.to(lin.weight))
            if lin.bias is not None:
                lin.bias.copy_(b.to(lin.bias))
        self.offsets = None if offsets is None else offsets.detach().clone()


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@torch.no_grad()
def token_mixing_maps(model, images: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Per block, the token MLP's linearization split by round: (B, rounds, N, N), entry [b, r, i, j] = how much
    token j feeds token i through the hidden units of round r (``filters.token_mixing``), averaged over channels:
    W2[:, R] · diag(act'(fc1 x)) · W1[R]. ``images=None``: at zero input (act'(0) = 1/2 for GELU; B = 1)."""
    bl = blocks(model)
    n = grid_of(model)[0] * grid_of(model)[1]
    if images is None:
        inputs = [None] * len(bl)
    else:
        inputs = capture_inputs(model, [b.mlp_tokens for b in bl], model.forward_features, images)
    out = []
    for b, x in zip(bl, inputs):
        fc1, fc2 = b.mlp_tokens.fc1, b.mlp_tokens.fc2
        hidden = fc1.out_features
        rounds = -(-hidden // n)
        w1, w2 = fc1.weight.double(), fc2.weight.double()
        if x is None:
            g = torch.full((1, 1, hidden), 0.5, dtype=torch.float64)
        else:
            z = fc1(x).double()                                   # (B, C, hidden)
            g = _gelu_grad(z).mean(1, keepdim=True)               # (B, 1, hidden)
        maps = []
        for r in range(rounds):
            units = slice(r * n, min((r + 1) * n, hidden))
            maps.append(torch.einsum("ih,bh,hj->bij", w2[:, units], g[:, 0, units], w1[units]))
        out.append(torch.stack(maps, 1))
    return out


def _quality(maps: torch.Tensor, offsets: torch.Tensor, grid) -> dict:
    """Per round (a "head"), over the tokens the round covers: the target's share of the row's absolute weight."""
    return offset_quality(maps, offsets, grid, keep=lambda m, t: m.abs().sum(-1) > 0,
                          share=lambda m, t: t / m.abs().sum(-1).clamp(min=1e-300))


def apply(model, strategy: Strategy, kind: str, *, seed: int = 0, kernel_size: Optional[int] = None,
          fit_method: Optional[str] = None, fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
          images=None) -> InitReport:
    start = time.perf_counter()
    bl = blocks(model)
    if fit_kwargs or fit_method is not None:
        raise ValueError("fit settings (fit_method, fit_kwargs) do not apply to an MLP-Mixer: it has no query/key "
                         "fit; the token-mixing init takes options such as gain")
    if kind == "":
        return InitReport(NAME, strategy.name, seed, kind, time.perf_counter() - start)
    grid = grid_of(model)
    layers = [TokenMix(b, grid) for b in bl]
    requests = [layer.token_mix_request() for layer in layers]
    src = strategy.token_mix(layers, requests, torch.Generator().manual_seed(seed), seed=seed,
                             kernel_size=3 if kernel_size is None else kernel_size, options=options)
    maps = token_mixing_maps(model)
    rows = [dict(s, **_quality(m, layer.offsets, grid)) if layer.offsets is not None else dict(s)
            for s, m, layer in zip(src, maps, layers)]
    return InitReport(NAME, strategy.name, seed, kind, time.perf_counter() - start, rows, src)


def on_data(model, images: torch.Tensor, offsets) -> List[dict]:
    """Per block, the token MLP's linearization on ``images`` (per round, as ``token_mixing_maps``) against its
    shifts: argmax hit and the target's share of each row's absolute weight. A Mixer has no query/key input."""
    maps = token_mixing_maps(model, images)
    grid = grid_of(model)
    out = []
    for i, m in enumerate(maps):
        out.append(with_quality({}, offsets, i, lambda: m, grid, _quality))
    return out


def input_shape(model) -> tuple:
    stem = model.stem
    return (int(stem.proj.in_channels), *(int(v) for v in stem.img_size))


def _own(name: str) -> dict:
    """The registered model's own sizes (its meta-device copy): timm's mixer entry points fix them."""
    m = timm_registry.describe(name).get("model")
    if m is None:
        return {}
    blk = m.blocks[0]
    dim = int(m.embed_dim)
    return {"embed_dim": dim, "num_blocks": len(m.blocks),
            "mlp_ratio": (blk.mlp_tokens.fc1.out_features / dim, blk.mlp_channels.fc1.out_features / dim)}


def build(r: BuildRequest):
    """timm's mixer entry points fix the patch size, depth and width: build the class with the registered model's
    sizes, the given ones in their place."""
    from timm.models.mlp_mixer import MlpMixer
    args = {**_own(r.name), **r.model_kwargs}
    kw = given_keywords(SOURCE, r)
    if "mlp_dim" in r.flags:
        ratio = (args["mlp_ratio"][0], r.flags["mlp_dim"] / kw.get("embed_dim", args["embed_dim"]))
        if "mlp_ratio" in r.model_kwargs and tuple(r.model_kwargs["mlp_ratio"]) != ratio:
            raise ValueError(f"--model-kwargs sets mlp_ratio={r.model_kwargs['mlp_ratio']!r} but --mlp-dim "
                             f"{r.flags['mlp_dim']} sets the channel ratio to {ratio[1]!r}: give it once")
        kw["mlp_ratio"] = ratio
    try:
        return MlpMixer(**{**args, **kw})
    except (AssertionError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise ValueError(f"timm's MlpMixer could not be built with {args} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None


SOURCE = ModelSource(
    spec="timm", prefixed=True, build=build,
    claims=lambda name: timm_registry.builds(name, matches), explain=timm_registry.explain,
    flags=("dim", "depth", "mlp_dim", "patch_size", "kernel_size", "model_kwargs"),
    keywords={"dim": "embed_dim", "depth": "num_blocks", "patch_size": "patch_size", "num_classes": "num_classes",
              "image_size": "img_size", "channels": "in_chans"},
    defaults={"kernel_size": 3},
    describe="timm:<mixer name>: a timm MlpMixer (MixerBlocks), whose --mlp-dim sizes the channel MLP and whose "
             "token MLP's ratio goes in --model-kwargs, e.g. 'mlp_ratio=(1.0,4.0)'",
    examples=("timm:mixer_s16_224",))

FAMILY = register_family(Family("timm_mixer", NAME, matches, ("token_mix",), apply, token_mixing_maps,
                                pseudo_input=False, on_data=on_data, input_shape=input_shape, source=SOURCE,
                                fit_defaults=FIT_DEFAULTS, grid_of=grid_of))
