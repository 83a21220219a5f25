"""The position scale of a standard ViT's impulse init, set relative to the model it lands in.

The structured-init paper multiplies the position embedding by 18 so that position dominates each token at init.
Whether it does depends on the model: on the content its patch embedding makes (timm's default conv init gives
content about 4× an HF ViT's at the same width) and on what its blocks add to the residual stream (each attention
output is about 0.4× a layer-normed token under the value/projection init, whatever the stream's scale). With ×18
at 8×8 tokens of width 64, a timm ViT's layers put 9-25 % of real images' rows on their offsets; an HF ViT's first
layer 77 %, its last 5 %.

``calibrate_position`` sets the scale s of the position embedding so that at every block's query/key input the
position carries a given share π of the variance (``on_data.position_share``; π = r²/(1 + r²) for a position r
times the std of the rest). Position and the rest add, and layer norm divides both alike, so from one measured
share c at scale s₀ the scale that gives π is s₀·sqrt(π(1 − c) / (c(1 − π))); the rest moves a little with s
(the blocks read the stream), so the update is repeated until the least-positional block is within 1 % of π.
The query/key fit itself reads LN(position), which no scale changes.

The images are a batch of the training images when there are some (the command line always has them; the first
``CALIBRATION_IMAGES`` are read); without, a batch of independent unit-variance pixels measures the content the
patch embedding's weights make.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .base import capture_inputs
from .on_data import position_share
from .view import ViTView, tokens_from_hook

#: Share of each block's query/key input variance carried by position at init (the calibrated default's π), chosen
#: on val/ with the fit on the position (docs/RESULTS.md, "The prior on data": timm and HF ViT, width 64, 100 images
#: per class, seed 0, mean of the two: 0.8 with the data fit 29.9, 0.94 34.9 (data fit 37.3), 0.98 37.8 (data fit
#: 36.1), against 31.4 for the paper's ×18).
POSITION_SHARE = 0.98
#: Images a calibration without a training batch uses (independent unit-variance pixels), and its seed.
SYNTHETIC_IMAGES, SYNTHETIC_SEED = 64, 0
#: At most this many of the given images are read by the calibration and the data fit (the first ones): a share
#: averaged over 64 images × every token moves by well under 1 % between batches, and each round is a forward pass.
CALIBRATION_IMAGES = 64
MAX_ROUNDS, TOLERANCE = 6, 0.01
#: What the query/key fit reads: the position alone (the paper) or each block's input on the images
FIT_INPUTS = ("position", "data")
FIT_INPUT = "position"


def synthetic_images(view: ViTView, count: int = SYNTHETIC_IMAGES) -> torch.Tensor:
    """``count`` images of independent N(0, 1) pixels in the model's input shape: the content the patch
    embedding's weights make from unit-variance input (natural images have correlated pixels, so their content
    differs; pass real images where there are some)."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    param = view.pos
    x = torch.randn((count, *view.input_shape), generator=gen)
    return x.to(device=param.device, dtype=param.dtype)


@torch.no_grad()
def block_shares(view: ViTView, images: torch.Tensor) -> List[float]:
    """Per block, the position share of its query/key input on ``images`` (the model as it is now)."""
    captured = capture_inputs(view.model, [blk.module for blk in view.blocks], view.run, images, tokens_from_hook,
                              stop=True)
    pos = view.pos.detach()[0, view.pos_offset:]
    return [position_share(x[:, view.prefix:], pos) for x in captured]


@torch.no_grad()
def calibrate_position(view: ViTView, base: torch.Tensor, images: torch.Tensor, target: float,
                       start: float) -> Tuple[float, List[float], int]:
    """Write pos = s·``base`` with s such that the least-positional block's share is ``target``; returns (s, the
    blocks' shares at s, rounds). Starts from s = ``start``; ``base`` is the embedding before any scaling."""
    pos = view.pos
    images = images[:CALIBRATION_IMAGES]
    s, shares = start, []
    for rounds in range(1, MAX_ROUNDS + 1):
        pos.copy_((base * s).to(pos))
        shares = block_shares(view, images)
        c = min(max(min(shares), 1e-6), 1 - 1e-9)
        if abs(c - target) <= TOLERANCE * target:
            return s, shares, rounds
        s *= math.sqrt(target * (1 - c) / (c * (1 - target)))
    pos.copy_((base * s).to(pos))
    return s, block_shares(view, images), MAX_ROUNDS


def check_share(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"position_share must be a number in (0, 1) (the share of each query/key input's variance "
                         f"carried by position at init), got {value!r}")
    return float(value)


@torch.no_grad()
def fit_on_data(view: ViTView, images: torch.Tensor, offsets: torch.Tensor, kernel_size: int, fit_method: str,
                seed: Optional[int], fit_kwargs: dict) -> float:
    """Refit each block's query/key weights, in block order, on its own query/key input averaged over ``images``
    (grid tokens, layer-normed again): the pseudo-input the block actually sees at init, with the position as the
    blocks before it pass it on and the batch's mean content. Same offsets, settings and softmax scale as the
    position fit. Returns the seconds it took."""
    import time

    from ..fitting import fit_impulse
    start = time.perf_counter()
    dim = view.dim
    images = images[:CALIBRATION_IMAGES]
    for blk in view.blocks:
        x = capture_inputs(view.model, [blk.module], view.run, images, tokens_from_hook, stop=True)[0]
        x = x[:, view.prefix:]
        x = torch.nn.functional.layer_norm(x.double().mean(0), [dim]).float().cpu()
        res = fit_impulse(view.heads, view.grid, kernel_size, dim, view.head_dim, fit_method=fit_method,
                          seed=seed if seed is not None else 0, layers=1, offsets=offsets, pseudo_input=x,
                          **fit_kwargs)
        c = math.sqrt(res.scale / float(blk.scale))            # the block's softmax scale · c² = the fit's
        blk.write("q", (c * res.q[0].double()).transpose(-1, -2).reshape(dim, dim).float())
        blk.write("k", (c * res.k[0].double()).transpose(-1, -2).reshape(dim, dim).float())
    return time.perf_counter() - start

