"""Standard ViTs (timm's ``VisionTransformer``, Hugging Face's ViT/DeiT, torchvision's ``VisionTransformer``) seen by
the init strategies as a whole: one engine over a ``ViTView`` (position embedding, grid, and per block the
query/key/value/projection weights, whatever the module layout).

"Structured Initialization for Vision Transformers" (Zheng, Li, Saratchandran, Lucey, NeurIPS 2025,
arXiv 2505.19985) initializes a standard ViT so that, at init, every attention head's map on the position
embedding is an impulse filter (a shift by one offset of a k×k window). Its public code does this inside a forked
timm (``VisionTransformer.post_init_weights``); the strategies do it to a model built by stock timm, Hugging Face
or torchvision through ``StandardViT`` (the ``init.protocol.ViTLayers`` of a view):

- a strategy's ``vit`` handler (``init/strategies``: impulse, official, mimetic) computes every block's query/key
  rows and value/projection and writes them through the adapter, which holds them until the handler returns (a
  refusal changes nothing); its ``ViTPlan`` says what the family does then: scale the position embedding found
  before any init (the paper's ×18) or calibrate the scale to the model (``families.calibration``), refit each
  block on its own input, keep or zero the query/key biases;
- a strategy without one reaches the blocks through its ``qk`` handler (``adapters.BlockQKLayer``) on the same
  pseudo-input X = LN(grid position embedding).

The report (``TimmInitReport``) holds, per block, the quality of the model's own maps on X. The paper's constants
are in ``fitting.structured``; what each strategy does with them, and the differences between the paper's code and
the package's default, in docs/timm.md.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from .._validate import float_dtype, float_tensor, odd_kernel_size, seed_int
from ..fitting.report import FitReport
from ..fitting.structured import LN_EPS, layer_norm_rows, official_offsets
from ..init.protocol import ViTPlan, ViTRequest
from ..init.registry import Strategy
from ..targets import impulse_targets
from .calibration import calibrate_position, fit_on_data, synthetic_images
from .view import ViTView, tokens_from_hook

__all__ = ["StandardViT", "run_vit_strategy", "attention_maps", "pseudo_input", "on_data", "FIT_DEFAULTS",
           "official_offsets", "TimmInitReport"]

#: The one table of a standard ViT's init settings (timm, Hugging Face and torchvision alike), read by the
#: strategies (``ViTRequest.defaults``), ``--help`` and docs/families.md:
#: - the closed form's target and sharpness, chosen on val/ for the timm ViT among the impulse target at mass 0.3
#:   (the earlier default) and 0.1 and the Laplace target at 0.1 (docs/RESULTS.md, "Every family": 28.5, 38.6, 25.4
#:   at 100 images per class, seed 0), at the paper's softmax scale 0.1; the iterative recipe at scale "auto";
#: - the calibrated position share and the fit's input, chosen on val/ (docs/RESULTS.md, "The prior on data").
FIT_DEFAULTS = {"closed_form": {"scale": 0.1, "target": "impulse", "target_mass": 0.1},
                "iterative": {"scale": "auto"},
                "position_share": 0.98, "fit_input": "position"}


def parameter_estimate(c) -> Optional[int]:
    """About how many parameters a standard ViT's blocks hold for the run's size flags (None where the sizes are
    the model's own): what the memory check before any work weighs."""
    if c.dim is None:
        return None
    mlp = c.mlp_dim if c.mlp_dim is not None else 4 * c.dim
    return (c.depth or 12) * (4 * c.dim * c.dim + 2 * c.dim * mlp)


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
    from .on_data import position_share, with_quality
    captured = capture_inputs(view.model, [blk.module for blk in view.blocks], view.run, images, tokens_from_hook)
    pos = view.pos.detach()[0, view.pos_offset:] if view.pos is not None else None
    p = view.prefix
    out = []
    for i, (blk, x) in enumerate(zip(view.blocks, captured)):
        row = {"position_share": position_share(x[:, p:], pos) if pos is not None else None}
        out.append(with_quality(row, offsets, i, lambda: _block_probs(blk, x, torch.float64)[1][..., p:, p:],
                                view.grid))
    return out


def _impulse_quality(maps: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor, grid, seconds: float,
                     fit_method: str, backend: str) -> FitReport:
    from .on_data import map_quality
    maps = maps.to(torch.float64)
    targets = impulse_targets(offsets, grid, dtype=torch.float64)
    n = maps.shape[-1]
    quality = map_quality(maps[None], offsets, grid)
    return FitReport(mse=float(((maps - targets) ** 2).mean()),
                     uniform_mse=float(((1.0 / n - targets) ** 2).mean()),
                     argmax_hit=quality["argmax_hit"], target_mass=quality["target_mass"], seconds=seconds,
                     max_logit=float(logits.abs().max()), fit_method=fit_method, backend=backend)


# ----------------------------------------------------------------------------------------------------------------
# init_


# ----------------------------------------------------------------------------------------------------------------
# The strategies' view of a standard ViT, and what the family does around a ``vit`` handler


class StandardViT:
    """``init.protocol.ViTLayers`` over a ``ViTView``: the request, the position embedding found before any init,
    and held writes (``commit`` applies them)."""

    def __init__(self, view: ViTView, defaults: Optional[dict] = None):
        self.view = view
        b = view.blocks
        qk_norm = any(not isinstance(blk.q_norm, torch.nn.Identity) or not isinstance(blk.k_norm, torch.nn.Identity)
                      for blk in b)
        self.request = ViTRequest(depth=view.depth, num_heads=view.heads, dim=view.dim, head_dim=view.head_dim,
                                  grid=view.grid, scales=tuple(float(blk.scale) for blk in b), qk_norm=qk_norm,
                                  has_position=view.pos is not None, defaults=dict(defaults or FIT_DEFAULTS))
        self.base = _position_before(view)
        self._qk: dict = {}
        self._vproj: dict = {}

    def position_rows(self, scale: float) -> torch.Tensor:
        if self.base is None:
            raise ValueError("model has no position embedding (e.g. pos_embed='none')")
        pos = self.base * scale
        if not bool(torch.isfinite(pos).all()):
            raise ValueError("the position embedding (times the init's scale) has NaN/Inf values. Note: timm "
                             "versions that build parameters with torch.empty leave pos_embed uninitialized under "
                             "weight_init='skip'; use weight_init='reset' (PyTorch default init, the public code's "
                             "setting) instead")
        rows = pos[0, self.view.pos_offset:]
        var = rows.to(torch.float64).var(dim=-1, unbiased=False)
        if float(var.mean()) < LN_EPS:
            raise ValueError(f"the position embedding (times the init's scale) is (nearly) constant over channels "
                             f"(mean variance {float(var.mean()):.1e} < LayerNorm eps {LN_EPS}): its layer norm, the "
                             f"fit's pseudo-input, carries no position. Was it left uninitialized or at zero? (timm "
                             f"under weight_init='skip' and transformers' DeiT leave it so: draw it first, e.g. "
                             f"torch.nn.init.trunc_normal_(pos, std=0.02), or use timm's weight_init='reset'.)")
        return rows

    def pseudo_input(self, scale: float) -> torch.Tensor:
        return layer_norm_rows(self.position_rows(scale).to(torch.float64), LN_EPS)

    def write_qk(self, block: int, q_rows: torch.Tensor, k_rows: torch.Tensor) -> None:
        self._qk[block] = (q_rows, k_rows)

    def write_vproj(self, block: int, w_v: torch.Tensor, w_proj: torch.Tensor) -> None:
        self._vproj[block] = (w_v, w_proj)

    @torch.no_grad()
    def commit(self, plan: ViTPlan) -> None:
        """Apply the held writes, the plan's query/key biases and (uncalibrated) position scale."""
        view = self.view
        if plan.position_scale is not None and self.base is not None:
            view.pos.copy_((self.base * plan.position_scale).to(view.pos))
        for i, blk in enumerate(view.blocks):
            if i in self._qk:
                blk.write("q", self._qk[i][0])
                blk.write("k", self._qk[i][1])
            if i in self._vproj:
                blk.write("v", self._vproj[i][0])
                blk.proj.weight.copy_(self._vproj[i][1].to(blk.proj.weight))
            if plan.qk_bias == "zero":
                blk.zero_bias("q")
                blk.zero_bias("k")


def run_vit_strategy(view: ViTView, strategy: Strategy, *, seed: Optional[int], fit_method: Optional[str],
                     kernel_size: Optional[int], fit_kwargs: Optional[dict] = None, options: Optional[dict] = None,
                     images: Optional[torch.Tensor] = None, defaults: Optional[dict] = None) -> "TimmInitReport":
    """``strategy``'s ``vit`` handler on the model ``view`` shows, then the plan: position, refit, biases.

    ``seed=None``: the global torch and numpy generators, used and advanced as the paper's code does (restored if
    the handler refuses); an int: private generators of the same kinds. ``images``: what the calibration and the
    data refit read (default: unit-variance pixels)."""
    start = time.perf_counter()
    k = 3 if kernel_size is None else odd_kernel_size(kernel_size)
    fit_method = strategy.check_fit_method(fit_method)
    if seed is not None:
        seed = seed_int(seed)
    vit = StandardViT(view, defaults)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    saved = (torch.get_rng_state(), np.random.get_state()) if seed is None else None
    try:
        plan = strategy.vit(vit, generator, seed=seed, fit_method=fit_method, kernel_size=k,
                            fit_kwargs=dict(fit_kwargs or {}), options=dict(options or {}))
    except BaseException:
        if saved is not None:  # a refusal discovered mid-way leaves the global generators as they were
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
        raise
    vit.commit(plan)
    extra = _after_commit(vit, plan, images, k, seed)
    if vit.base is not None:
        _remember_position(view, vit.base)
    return _report(vit, strategy.name, plan, k, seed, start, extra)


def _after_commit(vit: StandardViT, plan: ViTPlan, images, kernel_size: int, seed) -> dict:
    """The calibration of the position scale and the refit on data, which read the model as written."""
    extra: dict = {}
    view = vit.view
    if plan.calibrate_share is not None and vit.base is not None:
        batch = synthetic_images(view) if images is None else images
        scale, shares, rounds = calibrate_position(view, vit.base, batch, plan.calibrate_share, 18.0)
        plan.constants["pos_scale"] = scale
        extra["position_calibration"] = {
            "target_share": plan.calibrate_share, "block_shares": shares, "rounds": rounds, "pos_scale": scale,
            "images": int(batch.shape[0]), "source": "synthetic unit-variance pixels" if images is None else "images"}
    if plan.refit is not None:
        batch = synthetic_images(view) if images is None else images
        kwargs = dict(plan.refit)
        method = kwargs.pop("fit_method")
        seconds = fit_on_data(view, batch, plan.offsets[0], kernel_size, method, seed, kwargs)
        extra["fit_input"] = {"images": int(batch.shape[0]), "seconds": seconds}
    return extra


def _report(vit: StandardViT, init: str, plan: ViTPlan, kernel_size: int, seed, start: float,
            extra: dict) -> "TimmInitReport":
    view, fit = vit.view, plan.result or {}
    reports: List[FitReport] = []
    if plan.offsets is not None:
        with torch.no_grad():
            x = pseudo_input(view)[None]
            for i, blk in enumerate(view.blocks):
                logits, maps = _block_probs(blk, x, torch.float64)
                reports.append(_impulse_quality(maps[0], logits[0], plan.offsets[i], view.grid,
                                                fit.get("fit_seconds", 0.0), f"timm/{fit.get('fit_method')}",
                                                fit.get("backend", "")))
    constants = dict(plan.constants or {}, qk_bias=plan.qk_bias)
    if constants.get("vproj"):
        from ..fitting.structured import VPROJ_IDENTITY_GAIN, VPROJ_NOISE_GAIN, VPROJ_SIGN
        constants.update(vproj_noise_gain=VPROJ_NOISE_GAIN, vproj_identity_gain=VPROJ_IDENTITY_GAIN,
                         vproj_sign=VPROJ_SIGN)
    return TimmInitReport(init=init, fit_method=str(fit.get("fit_method")), seed=seed, grid=view.grid,
                          num_prefix_tokens=view.prefix, embed_dim=view.dim, num_heads=view.heads,
                          head_dim=view.head_dim, depth=view.depth, kernel_size=kernel_size, offsets=plan.offsets,
                          blocks=reports, seconds=time.perf_counter() - start,
                          fit_seconds=fit.get("fit_seconds", 0.0), constants=constants,
                          fit_report=fit.get("fit_report"), extra=extra)


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
