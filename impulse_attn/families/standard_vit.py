"""Structured (impulse) and mimetic initialization of a standard ViT: timm's ``VisionTransformer`` and Hugging
Face's ViT/DeiT, through one engine that sees a model as a ``ViTView`` (position embedding, grid, and per block the
query/key/value/projection weights).

"Structured Initialization for Vision Transformers" (Zheng, Li, Saratchandran, Lucey, NeurIPS 2025,
arXiv 2505.19985) initializes a standard ViT so that, at init, every attention head's map on the position
embedding is an impulse filter (a shift by one offset of a k×k window). Its public code does this inside a forked
timm (``VisionTransformer.post_init_weights``); this module does it to a model built by stock timm or Hugging Face
(``impulse_attn.families.timm_vit`` and ``hf_vit`` build the views; ``impulse_attn.timm`` is the timm face).

What ``structured_init_(view, init="impulse")`` changes (all blocks, one batched fit):

- the position embedding is multiplied by ``pos_scale`` (18), so the position dominates each token at init;
- every block's query/key weights are set so that head h's map on the pseudo-input X = LN(position embedding of
  the grid tokens) is the impulse map of offset ``offsets[h]``;
- every block's value weights and output projection are set so that value-then-projection is
  x ↦ x·(0.4·Z − 0.4·I) (Z uniform with variance 1/D), the "mimetic" value/projection of the public code.

``fit_method`` picks how the query/key weights are found:

- ``"official"``: the public code's closed form (``fitting.structured``): target logits 1000·T + 3·Z, rank-r
  truncated pseudo-inverse of X, rank-r SVD, unit Frobenius norm, times 7. By default (``compute_dtype=None``,
  i.e. float32) these are the public code's float32 torch operations, one for one: on a CPU whose kernels compute
  as the fork's machine did (docs/timm.md, "What bit for bit means") the weights, and so the maps, are
  bit-identical to the fork's, and elsewhere within float32 rounding of them. ``compute_dtype=torch.float64`` evaluates the same
  formulas without float32 round-off (Q Kᵀ then differs from the fork's by its float32 error, about 1e-5
  relative), but each singular pair's sign is the SVD's own choice: with nonzero query/key biases (PyTorch's
  default init, the fork's ``weight_init='skip'``) the bias·key term of the logits depends on that sign, so
  only float32 reproduces the fork's maps exactly.
- ``"closed_form"`` (default): this package's closed form, ``fitting.fit_impulse(fit_method="closed_form",
  pseudo_input=X)``: separable row+column target logits, scale calibrated to a mean target mass (``DEFAULT_FIT``).
- ``"iterative"``: the published Adam recipe through ``fit_impulse(fit_method="iterative", backend="auto")``.

``init="mimetic"`` is the public code's mimetic baseline (Trockman & Kolter 2023): per head Q Kᵀ = the best
rank-r part of 0.7·Z + 0.7·I, value/projection 0.4·Z − 0.4·I, position embedding untouched.

Constants (defaults; the public code's values, file ``timm/models/vision_transformer.py`` of the fork):

==================  =========  ==================================================================================
name                value      what it is / where it comes from
==================  =========  ==================================================================================
pos_scale           18.0       ``norm_p`` of ``post_init_weights('impulse')``: pos_embed ← 18·pos_embed, before
                               the fit reads it (mimetic: 1.0)
qk_scale            7.0        ``norm_q``: Q_h and K_h, each of unit Frobenius norm after the fit, times 7 (so
                               Q_h K_hᵀ = 49·A_h/||A_h||_*); official fit only (mimetic: 1.0)
vproj_scale         1.0        ``norm_v``: multiplies the value and projection weights
kernel_size         3          ``impulse_init(kernel_size=3)``, never changed by the code
offset order        4,1,5,3,   ``k = [4,1,5,3,7,0,2,6,8]``: flat 3×3 window positions (row-major, 4 = centre);
                    7,0,2,6,8  head h gets entry h % 9 (``fitting.structured.official_offsets``)
target logit        1000       ``impulse_init(scale=1000.0)``: W_h = 1000·T_h + ...
noise scale         3.0        ``... + 3.0*(tmp-0.0)*(weight==0)``: noise only off the target
noise               N(0, 0.6)  ``trunc_normal_(tmp, std=0.6)`` (timm's), cut at the absolute bounds ±2
                    cut ±2     (±3.3 std); drawn after a discarded ``torch.rand_like`` of the same size
pinv rank           head dim   ``s_inv[:att_rank] = 1/s[:att_rank]`` with ``att_rank = head_dim``
SVD rank            head dim   ``u[:, :, :att_rank]``, ``v[:, :, :att_rank]``, split as U S^½, V S^½
LN eps              1e-5       ``F.layer_norm(spatial_pe, [D])`` default; no affine parameters
V·Proj gains, sign  0.4, 0.4,  ``get_ortho_like(D, heads, 0.4, 0.4, -1)``: A = 0.4·U(±sqrt(3/D)) − 0.4·I,
                    −1         SVD A = U S Vᵀ, W_v = (U S^½)ᵀ, W_proj = (S^½ Vᵀ)ᵀ (so x W_vᵀ W_projᵀ = x A)
mimetic Q·K gains   0.7, 0.7   ``get_ortho_like(D, -inf, 0.7, 0.7, 1)`` per head: A = 0.7·U(±sqrt(3/D)) + 0.7·I,
                               W_q,h = (U S^½)[:, :r]ᵀ, W_k,h = (S^½ Vᵀ)[:r]
softmax scale       r^-½       timm's ``Attention.scale``; the code does not change it
==================  =========  ==================================================================================

Random streams (``seed``): the public code draws the noise Z from the global torch generator (per block, in block
order, after the model was built) and the value/projection (and mimetic) matrices from numpy's global legacy
generator; timm's ``train.py`` seeds both with ``seed + rank`` (``utils.random_seed``) just before
``create_model``. ``seed=None`` uses and advances those global generators exactly as the fork does (so calling
``init_`` right after ``create_model`` reproduces the fork's weights, and everything the script draws afterwards);
an int ``seed`` uses private generators of the same kinds (``torch.Generator().manual_seed(seed)``,
``np.random.RandomState(seed)``) and leaves the global ones alone.

Differences between the official code and the default (``fit_method="closed_form"``) are listed in docs/timm.md.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from .._validate import as_bool, choice, float_dtype, float_tensor, odd_kernel_size, positive_float, seed_int
from ..fitting.report import FitReport
from ..fitting.structured import (LN_EPS, NOISE_BOUNDS, NOISE_SCALE, NOISE_STD, OFFSET_ORDER_3x3, TARGET_LOGIT,
                                 layer_norm_rows, numpy_uniform, official_logits, official_offsets, official_qk,
                                 official_qk_float32, ortho_like, pinv_rank)
from ..targets import impulse_targets, valid_rows
from .calibration import (FIT_INPUT, FIT_INPUTS, POSITION_SHARE, calibrate_position, check_share, fit_on_data,
                          synthetic_images)
from .view import ViTView, tokens_from_hook

__all__ = ["structured_init_", "attention_maps", "pseudo_input", "DEFAULT_FIT", "official_offsets", "TimmInitReport",
           "INITS", "FIT_METHODS", "IMPULSE_SCALES", "MIMETIC_SCALES", "VPROJ_NOISE_GAIN", "VPROJ_IDENTITY_GAIN",
           "MIMETIC_NOISE_GAIN", "MIMETIC_IDENTITY_GAIN"]

INITS = ("impulse", "mimetic")
FIT_METHODS = ("closed_form", "official", "iterative")

#: (pos_scale, qk_scale, vproj_scale) of ``post_init_weights('impulse')``: norm_p, norm_q, norm_v = 18, 7, 1.
IMPULSE_SCALES = (18.0, 7.0, 1.0)
#: (pos_scale, qk_scale, vproj_scale) of ``post_init_weights('mimetic')``: all 1.
MIMETIC_SCALES = (1.0, 1.0, 1.0)
#: ``get_ortho_like(D, heads, 0.4, 0.4, -1)``: value·projection = 0.4·Z − 0.4·I. The gains (of the noise Z and of
#: the identity) are the mimetic paper's α, β; the sign is β's.
VPROJ_NOISE_GAIN, VPROJ_IDENTITY_GAIN, VPROJ_SIGN = 0.4, 0.4, -1
#: ``get_ortho_like(D, -inf, 0.7, 0.7, 1)``: mimetic query·key = 0.7·Z + 0.7·I, one draw per head.
MIMETIC_NOISE_GAIN, MIMETIC_IDENTITY_GAIN, MIMETIC_SIGN = 0.7, 0.7, 1

#: The closed form's settings on a standard ViT unless given, chosen on val/ for the timm ViT among the impulse target
#: at mass 0.3 (the earlier default) and 0.1 and the Laplace target at 0.1 (docs/RESULTS.md, "Every family": 28.5,
#: 38.6, 25.4 at 100 images per class, seed 0); Hugging Face ViTs share it.
DEFAULT_FIT = {"scale": 0.1, "target": "impulse", "target_mass": 0.1}

# fit_impulse arguments that init_ sets from the model; a user value would contradict it.
_FIT_KWARGS_SET_HERE = ("num_heads", "grid_size", "kernel_size", "dim", "head_dim", "rank", "fit_method", "seed",
                        "layers", "offsets", "pseudo_input")


@dataclass
class TimmInitReport:
    """What ``init_`` did to a timm model, and how impulse-like the resulting maps are.

    blocks:      per block, the quality of the model's own attention maps (its qkv weights, biases and softmax
                 scale) on the pseudo-input X = LN(grid pos_embed), against the impulse targets of ``offsets``:
                 mse, uniform_mse (a uniform map's mse), argmax_hit (fraction of valid rows whose argmax is the
                 target), target_mass (mean weight on the target over valid rows), max_logit. ``seconds`` in
                 each entry is the batched fit's time, shared by all blocks. Empty for ``init="mimetic"``.
    offsets:     (depth, heads, 2) (row, col) offsets, None for mimetic.
    seconds:     wall-clock time of the whole ``init_`` call; ``fit_seconds``: the query/key fit alone.
    fit_report:  ``fit_impulse``'s own report (closed_form / iterative), None otherwise.
    constants:   every scale and constant used (see the module docstring).
    """

    init: str
    fit_method: str
    seed: Optional[int]
    grid: Tuple[int, int]
    num_prefix_tokens: int
    embed_dim: int
    num_heads: int
    head_dim: int
    depth: int
    kernel_size: int
    offsets: Optional[torch.Tensor]
    blocks: List[FitReport]
    seconds: float
    fit_seconds: float
    constants: dict
    fit_report: Optional[FitReport] = None
    extra: dict = field(default_factory=dict)

    def _mean(self, name: str) -> float:
        vals = [getattr(b, name) for b in self.blocks]
        return float(np.mean(vals)) if vals else float("nan")

    # the blocks' mean of each quality figure
    argmax_hit = property(lambda self: self._mean("argmax_hit"))
    target_mass = property(lambda self: self._mean("target_mass"))
    mse = property(lambda self: self._mean("mse"))
    uniform_mse = property(lambda self: self._mean("uniform_mse"))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["offsets"] = None if self.offsets is None else self.offsets.tolist()
        d["blocks"] = [b.as_dict() for b in self.blocks]
        d["fit_report"] = None if self.fit_report is None else self.fit_report.as_dict()
        return d

    def __str__(self) -> str:
        how = (f"fit {self.fit_method}" if self.init == "impulse" else
               "official" if self.fit_method == "official" else "value/projection x -> x(0.4Z - 0.4I)")
        head = (f"{self.init} init ({how}), seed "
                f"{self.seed}: {self.depth} blocks x {self.num_heads} heads (head dim {self.head_dim}, D "
                f"{self.embed_dim}) on a {self.grid[0]}x{self.grid[1]} grid, {self.num_prefix_tokens} prefix "
                f"tokens, {self.seconds:.2f} s (fit {self.fit_seconds:.2f} s)")
        if not self.blocks:
            return head
        lines = [head, f"offsets per head: {self.offsets[0].tolist()}",
                 "block  mse       uniform   argmax_hit  target_mass  max_logit"]
        for i, b in enumerate(self.blocks):
            lines.append(f"{i:5d}  {b.mse:.6f}  {b.uniform_mse:.6f}  {b.argmax_hit:10.3f}  {b.target_mass:11.3f}  "
                         f"{b.max_logit:9.1f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Pseudo-input and attention maps, read from the view (nothing here changes the model)


def pseudo_input(view: ViTView, pos: Optional[torch.Tensor] = None, dtype=torch.float64) -> torch.Tensor:
    """X = LN(position embedding of the grid tokens), (N, D): the query/key input the fit is made for.

    Prefix tokens (class, register, distillation) are dropped when the embedding has rows for them. LN has no
    affine parameters and eps 1e-5 (``F.layer_norm`` default, as the public code). ``pos`` overrides the model's
    embedding (used by the init before it writes the scaled embedding).
    """
    float_dtype(dtype)
    pos = view.pos if pos is None else float_tensor(pos, "pos")
    grid_pos = pos.detach()[0, view.pos_offset:].to(device="cpu", dtype=dtype)
    return layer_norm_rows(grid_pos, LN_EPS)


def _block_probs(block, x: torch.Tensor, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and softmax of one attention block on its input x (B, T, D), as its forward computes them: its own
    query/key weights and biases, query/key norms and softmax scale."""
    wq, wk = block.weight("q").detach(), block.weight("k").detach()
    bq, bk = block.bias("q"), block.bias("k")
    dtype = wq.dtype if dtype is None else dtype
    x = x.to(device=wq.device, dtype=dtype)
    q_norm, k_norm = block.q_norm, block.k_norm
    if dtype != wq.dtype:
        q_norm, k_norm = copy.deepcopy(q_norm).to(dtype=dtype), copy.deepcopy(k_norm).to(dtype=dtype)
    b, t, _ = x.shape
    h = block.num_heads

    def heads(w, bias):
        y = x @ w.to(dtype).T + (0 if bias is None else bias.detach().to(dtype))
        return y.reshape(b, t, h, -1).transpose(1, 2)
    q, k = q_norm(heads(wq, bq)), k_norm(heads(wk, bk))
    logits = (q * block.scale) @ k.transpose(-2, -1)
    return logits, logits.softmax(dim=-1)


@torch.no_grad()
def attention_maps(view: ViTView, images: Optional[torch.Tensor] = None, *, dtype=None) -> List[torch.Tensor]:
    """Per block, the attention maps (B, heads, N, N) over the grid tokens only (prefix tokens dropped).

    Computed from each block's own query/key weights and biases, query/key norms and softmax scale, exactly as
    the model's forward does, in ``dtype`` (default: the model's).

    - ``images`` (B, C, H, W): the maps of a forward pass (in eval mode, which is restored afterwards). The
      softmax runs over all tokens, prefix included, and the prefix rows and columns are then dropped, so a row
      sums to 1 minus the weight its query puts on the class/register tokens.
    - ``images=None``: the maps on the pseudo-input X = LN(grid position embedding) (B = 1, no prefix tokens):
      what the impulse fit shapes, the map a block would show for an image with no content.
    """
    if dtype is not None:
        float_dtype(dtype)
    if images is None:
        x = pseudo_input(view, dtype=torch.float64 if dtype is None else dtype)[None]
        return [_block_probs(blk, x, dtype)[1] for blk in view.blocks]
    from .base import capture_inputs
    captured = capture_inputs(view.model, [blk.module for blk in view.blocks], view.run, images, tokens_from_hook)
    p = view.prefix
    return [_block_probs(blk, x, dtype)[1][..., p:, p:] for blk, x in zip(view.blocks, captured)]


@torch.no_grad()
def on_data(view: ViTView, images: torch.Tensor, offsets) -> List[dict]:
    """Per block, the prior on ``images`` (``families.on_data``): argmax hit and target mass of the grid maps
    (where ``offsets`` has the block's), and the position share of its query/key input (grid tokens)."""
    from .base import capture_inputs
    from .on_data import map_quality, position_share
    captured = capture_inputs(view.model, [blk.module for blk in view.blocks], view.run, images, tokens_from_hook)
    pos = view.pos.detach()[0, view.pos_offset:] if view.pos is not None else None
    p = view.prefix
    out = []
    for i, (blk, x) in enumerate(zip(view.blocks, captured)):
        row = {"position_share": position_share(x[:, p:], pos) if pos is not None else None}
        off = offsets[i] if offsets is not None and i < len(offsets) else None
        if off is not None:
            maps = _block_probs(blk, x, torch.float64)[1][..., p:, p:]
            q = map_quality(maps, torch.as_tensor(off), view.grid)
            row.update(argmax_hit=q["argmax_hit"], target_mass=q["target_mass"])
        out.append(row)
    return out


def _impulse_quality(maps: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor, grid, seconds: float,
                     fit_method: str, backend: str) -> FitReport:
    maps = maps.to(torch.float64)
    targets = impulse_targets(offsets, grid, dtype=torch.float64)
    valid = valid_rows(offsets, grid)
    n = maps.shape[-1]
    hit_index = targets.argmax(-1)
    n_valid = max(int(valid.sum()), 1)
    mass = maps.gather(-1, hit_index[..., None])[..., 0]
    return FitReport(mse=float(((maps - targets) ** 2).mean()),
                     uniform_mse=float(((1.0 / n - targets) ** 2).mean()),
                     argmax_hit=int(((maps.argmax(-1) == hit_index) & valid).sum()) / n_valid,
                     target_mass=float((mass * valid).sum()) / n_valid, seconds=seconds,
                     max_logit=float(logits.abs().max()), fit_method=fit_method, backend=backend)


# ----------------------------------------------------------------------------------------------------------------
# init_


def _check_scale(value, name: str) -> Optional[float]:
    if value is None:
        return None
    return positive_float(value, name)


def structured_init_(view: ViTView, init: str = "impulse", *, kernel_size: int = 3, fit_method: str = "closed_form",
                     seed: Optional[int] = 0, pos_scale: Optional[float] = None, qk_scale: Optional[float] = None,
                     vproj_scale: Optional[float] = None, vproj: bool = True, qk_bias: Optional[str] = None,
                     compute_dtype=None, images: Optional[torch.Tensor] = None,
                     position_share: Optional[float] = None, fit_input: str = FIT_INPUT,
                     **fit_kwargs) -> TimmInitReport:
    """Re-initialize a standard ViT (seen through ``view``) in place with the structured (impulse) or mimetic init.

    Args:
        view: a ``ViTView`` of a timm VisionTransformer or a Hugging Face ViT/DeiT (any patch/image size, width,
            head count, class token or not, register tokens; non-square grids), already checked by its family.
            Refused before anything changes (ValueError/TypeError naming the problem): no position embedding
            (impulse), query/key norms (impulse), an official fit whose pseudo-input has rank below the head dim.
        init: ``"impulse"`` (structured init) or ``"mimetic"`` (the public code's baseline).
        kernel_size: odd window size k; offsets cycle through it in the public code's order (k = 3 there).
        fit_method: ``"closed_form"`` (default, this package's closed form), ``"official"`` (the public code's
            closed form), ``"iterative"`` (the published Adam recipe). For ``init="mimetic"``, ``"official"``
            reproduces the public code including its value/projection orientation (see docs/timm.md); any other
            value assigns value/projection so that x ↦ x·(0.4·Z − 0.4·I), as its impulse branch does.
        seed: int (private generators, global ones untouched) or None (the global torch and numpy generators,
            consumed exactly as the public code does; only for ``fit_method="official"`` or ``init="mimetic"``).
        pos_scale, qk_scale, vproj_scale: override the public code's norm_p, norm_q, norm_v (impulse 18, 7, 1;
            mimetic 1, 1, 1). ``qk_scale`` only applies to the official fit and mimetic (the other fits set
            the logit scale themselves: pass ``target_mass``/``logit_scale``/``scale`` to ``fit_impulse``).
            For the closed_form and iterative fits the position scale is calibrated unless ``pos_scale`` is given
            (``families.calibration``): position carries ``position_share`` (default
            ``calibration.POSITION_SHARE``) of every block's query/key input variance on ``images``.
        images: (B, C, H, W) training images the calibration measures the model's content on (default: a batch of
            unit-variance pixels, i.e. the patch embedding's weights). Read, never trained on.
        position_share: the calibration's target share π in (0, 1); only for the closed_form / iterative fits.
        fit_input: what the closed_form / iterative fits read: ``"position"`` (the pseudo-input LN(position
            embedding), as the paper) or ``"data"`` (each block's own query/key input averaged over ``images``, block
            by block after the calibration: what the block sees at init, position as the blocks before it pass it
            on, plus the batch's mean content; ``calibration.fit_on_data``).
        vproj: re-initialize value and projection weights (True, as the public code) or leave them.
        qk_bias: ``"keep"`` or ``"zero"`` the query/key biases of ``attn.qkv``; default "keep" for the official
            fit and mimetic (the public code does not touch them), "zero" for closed_form / iterative (so the
            map on the pseudo-input is exactly the fitted map). timm's default init already has zero biases.
        compute_dtype: the official fit's linear algebra: None or torch.float32 (the public code's float32
            operations, bit for bit) or torch.float64 (same formulas, no float32 round-off; see above).
        **fit_kwargs: passed to ``impulse_attn.fitting.fit_impulse`` (closed_form / iterative), e.g. ``steps``,
            ``lr``, ``scale`` (default 0.1 for closed_form, "auto" for iterative), ``target_mass``, ``backend``.
    Returns:
        TimmInitReport (per-block map quality on the pseudo-input, offsets, seconds, constants).
    """
    start = time.perf_counter()
    choice(init, "init", INITS)
    choice(fit_method, "fit_method", FIT_METHODS)
    kernel_size = odd_kernel_size(kernel_size)
    if seed is not None:
        seed = seed_int(seed)
    if seed is None and init == "impulse" and fit_method != "official":
        raise ValueError("seed=None (the global generators, as the public code) is only for fit_method='official' "
                         "or init='mimetic'; give an int seed")
    vproj = as_bool(vproj, "vproj")
    if qk_bias is not None:
        choice(qk_bias, "qk_bias", ("keep", "zero"))
    if compute_dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be None, torch.float32 or torch.float64, got {compute_dtype!r}")
    pos_scale = _check_scale(pos_scale, "pos_scale")
    qk_scale = _check_scale(qk_scale, "qk_scale")
    vproj_scale = _check_scale(vproj_scale, "vproj_scale")
    learned_fit = init == "impulse" and fit_method in ("closed_form", "iterative")
    if fit_kwargs and not learned_fit:
        raise ValueError(f"extra keyword arguments {sorted(fit_kwargs)} go to fit_impulse, which only "
                         f"fit_method='closed_form' / 'iterative' with init='impulse' use")
    bad = sorted(set(fit_kwargs) & set(_FIT_KWARGS_SET_HERE))
    if bad:
        raise ValueError(f"{bad} are set by init_ from the model and cannot be passed")
    if learned_fit and qk_scale is not None:
        raise ValueError("qk_scale applies to fit_method='official' and init='mimetic'; the closed_form / "
                         "iterative fits set the logit scale themselves (pass target_mass, logit_scale or scale)")
    if compute_dtype is not None and not (init == "impulse" and fit_method == "official"):
        raise ValueError("compute_dtype only applies to init='impulse', fit_method='official'")
    compute_dtype = torch.float32 if compute_dtype is None else compute_dtype
    position_share = check_share(position_share)
    choice(fit_input, "fit_input", FIT_INPUTS)
    if fit_input == "data" and not learned_fit:
        raise ValueError("fit_input='data' refits the closed_form / iterative impulse fits on the blocks' inputs; it "
                         "does not apply to the official fit or mimetic")
    calibrate = learned_fit and pos_scale is None
    if position_share is not None and not calibrate:
        raise ValueError("position_share sets the calibrated position scale of the closed_form / iterative impulse "
                         "fits; it does not apply with an explicit pos_scale, the official fit or mimetic")

    if init == "impulse" and view.pos is None:
        raise ValueError("model has no position embedding (e.g. pos_embed='none'): the impulse fit uses the "
                         "layer-normed position embedding as its pseudo-input")
    grid, n, dim, heads, hd, depth = view.grid, view.n, view.dim, view.heads, view.head_dim, view.depth
    blocks = view.blocks
    if init == "impulse":
        for i, blk in enumerate(blocks):
            if not isinstance(blk.q_norm, torch.nn.Identity) or not isinstance(blk.k_norm, torch.nn.Identity):
                raise ValueError(f"block {i} normalizes queries and keys (qk_norm=True): the normalization "
                                 f"rescales every logit, so no fitted map survives it")
        half = kernel_size // 2
        if half >= min(grid):
            raise ValueError(f"kernel_size {kernel_size} reaches past a {grid[0]}x{grid[1]} grid: offsets of "
                             f"±{half} tokens leave no valid row")
    defaults = IMPULSE_SCALES if init == "impulse" else MIMETIC_SCALES
    p_scale = defaults[0] if pos_scale is None else pos_scale       # calibrated below when ``calibrate``
    base = _position_before(view)
    q_scale = defaults[1] if qk_scale is None else qk_scale
    v_scale = defaults[2] if vproj_scale is None else vproj_scale
    if qk_bias is None:
        qk_bias = "zero" if learned_fit else "keep"

    saved = (torch.get_rng_state(), np.random.get_state()) if seed is None else None
    try:
        new = _compute(view, init, fit_method, kernel_size, seed, p_scale, q_scale, v_scale, vproj,
                       compute_dtype, fit_kwargs, base)
    except BaseException:
        if saved is not None:  # a refusal discovered mid-way leaves the global generators as they were
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
        raise

    # Nothing above touched the model; write everything at once.
    with torch.no_grad():
        if new["pos"] is not None:
            view.pos.copy_(new["pos"])
        for i, blk in enumerate(blocks):
            blk.write("q", new["qk"][i][:dim])
            blk.write("k", new["qk"][i][dim:])
            if vproj:
                blk.write("v", new["v"][i])
                blk.proj.weight.copy_(new["proj"][i])
            if qk_bias == "zero":
                blk.zero_bias("q")
                blk.zero_bias("k")
    if calibrate:
        target = POSITION_SHARE if position_share is None else position_share
        batch = synthetic_images(view) if images is None else images
        p_scale, shares, rounds = calibrate_position(view, base, batch, target, p_scale)
        new["extra"]["position_calibration"] = {
            "target_share": target, "block_shares": shares, "rounds": rounds, "pos_scale": p_scale,
            "images": int(batch.shape[0]), "source": "synthetic unit-variance pixels" if images is None else "images"}
    if fit_input == "data":
        batch = synthetic_images(view) if images is None else images
        kwargs = {**DEFAULT_FIT, **fit_kwargs} if fit_method == "closed_form" else dict(fit_kwargs)
        kwargs.setdefault("scale", "auto")
        refit = fit_on_data(view, batch, new["offsets"][0], kernel_size, fit_method, seed, kwargs)
        new["extra"]["fit_input"] = {"images": int(batch.shape[0]), "seconds": refit}
    if view.pos is not None:
        _remember_position(view, base)

    reports: List[FitReport] = []
    offsets = new["offsets"]
    if init == "impulse":
        with torch.no_grad():
            x = pseudo_input(view)[None]
            for i, blk in enumerate(blocks):
                logits, maps = _block_probs(blk, x, torch.float64)
                reports.append(_impulse_quality(maps[0], logits[0], offsets[i], grid, new["fit_seconds"],
                                                f"timm/{fit_method}", new["backend"]))
    constants = dict(pos_scale=p_scale, qk_scale=q_scale if not learned_fit else None, vproj_scale=v_scale,
                     vproj=vproj, qk_bias=qk_bias, ln_eps=LN_EPS)
    if init == "impulse":
        constants.update(offset_order_3x3=list(OFFSET_ORDER_3x3))
        if fit_method == "official":
            constants.update(target_logit=TARGET_LOGIT, noise_scale=NOISE_SCALE, noise_std=NOISE_STD,
                             noise_bounds=list(NOISE_BOUNDS), pinv_rank=hd, svd_rank=hd,
                             compute_dtype=str(compute_dtype).replace("torch.", ""))
        else:
            constants.update(softmax_scale_of_fit=new["fit_scale"], attn_scale=float(blocks[0].scale))
    if vproj:
        constants.update(vproj_noise_gain=VPROJ_NOISE_GAIN, vproj_identity_gain=VPROJ_IDENTITY_GAIN,
                         vproj_sign=VPROJ_SIGN)
    if init == "mimetic":
        constants.update(mimetic_noise_gain=MIMETIC_NOISE_GAIN, mimetic_identity_gain=MIMETIC_IDENTITY_GAIN,
                         vproj_orientation="official" if fit_method == "official" else "x (W_v^T W_proj^T) = x A")
    return TimmInitReport(init=init, fit_method=fit_method, seed=seed, grid=grid, num_prefix_tokens=view.prefix,
                          embed_dim=dim, num_heads=heads, head_dim=hd, depth=depth, kernel_size=kernel_size,
                          offsets=offsets, blocks=reports, seconds=time.perf_counter() - start,
                          fit_seconds=new["fit_seconds"], constants=constants, fit_report=new["fit_report"],
                          extra=new["extra"])


def _position_before(view: ViTView) -> Optional[torch.Tensor]:
    """The position embedding as it was before this package's init scaled it: the model's own, or, when the model
    still holds what an earlier ``init_`` wrote, what that call found (so a second call does not scale twice)."""
    if view.pos is None:
        return None
    now = view.pos.detach().cpu()
    record = getattr(view.model, "_impulse_attn_position", None)
    if record is not None and record["written"].shape == now.shape and torch.equal(record["written"], now):
        return record["before"].clone()
    return now.clone()


def _remember_position(view: ViTView, base: torch.Tensor) -> None:
    view.model._impulse_attn_position = {"before": base.clone(), "written": view.pos.detach().cpu().clone()}


def _compute(view: ViTView, init: str, fit_method: str, kernel_size: int, seed: Optional[int], p_scale: float,
             q_scale: float, v_scale: float, vproj: bool, compute_dtype, fit_kwargs: dict,
             base: Optional[torch.Tensor]) -> dict:
    """Every new tensor (CPU), computed without touching the model. Raises before anything is written."""
    grid, n, dim, heads, hd, depth = view.grid, view.n, view.dim, view.heads, view.head_dim, view.depth
    blocks = view.blocks
    uniform = numpy_uniform(seed)
    out = dict(pos=None, qk=[], v=[], proj=[], offsets=None, fit_seconds=0.0, fit_report=None, backend="",
               fit_scale=None, extra={})
    t0 = time.perf_counter()

    if init == "mimetic":
        qk_rank_err = []
        for i in range(depth):
            rows = torch.empty(2 * dim, dim, dtype=torch.float32)
            for h in range(heads):
                left, right = ortho_like(dim, MIMETIC_NOISE_GAIN, MIMETIC_IDENTITY_GAIN, MIMETIC_SIGN, uniform)
                q = left[:, :hd]
                k = right.T[:, :hd]
                rows[h * hd:(h + 1) * hd] = q_scale * torch.tensor(q.T).float()
                rows[dim + h * hd:dim + (h + 1) * hd] = q_scale * torch.tensor(k.T).float()
            out["qk"].append(rows)
            if vproj:
                _vproj(out, dim, v_scale, uniform, official_orientation_mimetic=(fit_method == "official"))
        if base is not None:
            out["pos"] = base * p_scale
        out["fit_seconds"] = time.perf_counter() - t0
        out["backend"] = "numpy"
        return out

    # impulse: scale the position embedding first; the fit reads the scaled one (as the public code).
    pos = base * p_scale
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("model.pos_embed (times pos_scale) has NaN/Inf values. Note: timm versions that build "
                         "parameters with torch.empty leave pos_embed uninitialized under weight_init='skip'; "
                         "use weight_init='reset' (PyTorch default init, the public code's setting) instead")
    grid_var = pos[0, view.pos_offset:].to(torch.float64).var(dim=-1, unbiased=False)
    if float(grid_var.mean()) < LN_EPS:
        raise ValueError(f"the position embedding (times pos_scale) is (nearly) constant over channels (mean "
                         f"variance {float(grid_var.mean()):.1e} < LayerNorm eps {LN_EPS}): its layer norm, the fit's "
                         f"pseudo-input, carries no position. Was it left uninitialized or at zero? (timm under "
                         f"weight_init='skip' and transformers' DeiT leave it so: draw it first, e.g. "
                         f"torch.nn.init.trunc_normal_(pos, std=0.02), or use timm's weight_init='reset'.)")
    x = pseudo_input(view, pos=pos, dtype=torch.float64)
    rank, ratio = pinv_rank(x, hd)
    offsets = official_offsets(heads, kernel_size)
    out["offsets"] = offsets[None].expand(depth, heads, 2).clone()
    if fit_method == "official":
        floor = 10 * math.sqrt(torch.finfo(compute_dtype).eps)
        if rank < hd or ratio < floor:
            raise ValueError(
                f"fit_method='official' truncates the pseudo-inverse of LN(pos_embed) at rank head_dim = {hd}, but "
                f"that {n}x{dim} matrix has rank {rank} (σ_{hd}/σ_1 = {ratio:.2e}, needs > {floor:.1e}): the code "
                f"would invert (near-)zero singular values. This happens when the grid has fewer than head_dim + 1 "
                f"tokens (here {grid[0]}x{grid[1]} = {n}); use fit_method='closed_form'")
        grid_pos = pos[0, view.pos_offset:]
        gen = None if seed is None else torch.Generator().manual_seed(seed)  # None: the global generator
        qk = []
        for i in range(depth):  # one layer at a time, in order: the noise stream is the public code's
            logits = official_logits(offsets, grid, generator=gen, dtype=compute_dtype)
            if compute_dtype == torch.float32:
                u_lr, vt_lr = official_qk_float32(grid_pos.float(), logits, hd)
                qk.append((u_lr, vt_lr.transpose(-1, -2)))
            else:
                qk.append(logits)
            if vproj:
                _vproj(out, dim, v_scale, uniform, official_orientation_mimetic=False)
        if compute_dtype == torch.float64:
            q, k = official_qk(x, torch.stack(qk), hd)          # all blocks in one batched fit
            qk = list(zip(q, k))
        for q, k in qk:                                        # q, k (heads, D, r)
            rows = torch.empty(2 * dim, dim, dtype=torch.float32)
            for h in range(heads):
                if compute_dtype == torch.float32:  # the code: norm_q * torch.tensor(Q[h].T).float()
                    rows[h * hd:(h + 1) * hd] = q_scale * q[h].T
                    rows[dim + h * hd:dim + (h + 1) * hd] = q_scale * k[h].T
                else:
                    rows[h * hd:(h + 1) * hd] = (q_scale * q[h].T).float()
                    rows[dim + h * hd:dim + (h + 1) * hd] = (q_scale * k[h].T).float()
            out["qk"].append(rows)
        out["backend"] = f"structured/{str(compute_dtype).replace('torch.', '')}"
    else:
        from ..fitting import fit_impulse
        kwargs = dict(fit_kwargs)
        if fit_method == "closed_form":
            kwargs = {**DEFAULT_FIT, **kwargs}
        kwargs.setdefault("scale", "auto")
        res = fit_impulse(heads, grid, kernel_size, dim, hd, fit_method=fit_method, seed=seed, layers=depth,
                          offsets=offsets, pseudo_input=x.float(), **kwargs)
        q = res.q.reshape(depth, heads, dim, hd).to(torch.float64)
        k = res.k.reshape(depth, heads, dim, hd).to(torch.float64)
        for i, blk in enumerate(blocks):
            c = math.sqrt(res.scale / float(blk.scale))  # attn.scale · c² = the fit's softmax scale
            rows = torch.empty(2 * dim, dim, dtype=torch.float32)
            rows[:dim] = (c * q[i]).transpose(-1, -2).reshape(dim, dim).float()
            rows[dim:] = (c * k[i]).transpose(-1, -2).reshape(dim, dim).float()
            out["qk"].append(rows)
        if vproj:
            for i in range(depth):
                _vproj(out, dim, v_scale, uniform, official_orientation_mimetic=False)
        out["fit_report"] = res.report
        out["backend"] = res.report.backend
        out["fit_scale"] = res.scale
    out["pos"] = pos
    out["fit_seconds"] = time.perf_counter() - t0
    return out


def _vproj(out: dict, dim: int, v_scale: float, uniform, official_orientation_mimetic: bool) -> None:
    """Value rows of qkv and proj weight from get_ortho_like(D, heads, 0.4, 0.4, -1): L R = 0.4·Z − 0.4·I.

    The public code's impulse branch stores W_v = Lᵀ, W_proj = Rᵀ, so value-then-projection is x ↦ x L R = x A
    (the mimetic paper's W_v W_proj ≈ αZ − βI). Its mimetic branch stores W_v = L, W_proj = R (x ↦ x (R L)ᵀ);
    ``official_orientation_mimetic`` reproduces that.
    """
    left, right = ortho_like(dim, VPROJ_NOISE_GAIN, VPROJ_IDENTITY_GAIN, VPROJ_SIGN, uniform)
    if official_orientation_mimetic:
        out["v"].append(v_scale * torch.tensor(left).float())
        out["proj"].append(v_scale * torch.tensor(right).float())
    else:
        out["v"].append(v_scale * torch.tensor(left.T).float())
        out["proj"].append(v_scale * torch.tensor(right.T).float())
