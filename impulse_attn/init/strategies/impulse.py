"""impulse: every head (or token-mixing unit) starts as an impulse filter, a shift by one offset of a k×k window.

Four realizations, one per layer kind; each starts from its family's table of defaults (the request's ``defaults``:
``attention.layers.FIT_DEFAULTS``, ``families.standard_vit.FIT_DEFAULTS``, the window-bias and token-mixing
families' tables), which the caller's settings override:

- a standard ViT as a whole (timm, Hugging Face, torchvision): Q, K of every block fitted on the layer-normed
  position embedding (``fitting.fit_impulse``, the closed form by default, the structured-init paper's offsets),
  value/projection from the paper's 0.4·Z − 0.4·I, and the position embedding's scale calibrated to the model
  (``families.calibration``) or fixed (``pos_scale``);
- query/key layers: Q, K fitted so that the softmax map on the layer's pseudo-input is the head's impulse map;
- window biases (Swin): the relative position bias table holds the impulse logit exactly (``targets.window``);
- token-mixing MLPs (MLP-Mixer): a bank of shifts over the hidden units (``filters.token_mixing``).
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import torch

from ..._validate import choice, positive_float
from ...filters.token_mixing import impulse_token_mlp
from ...fitting.structured import OFFSET_ORDER_3x3, POS_SCALE, VPROJ_SCALE, numpy_uniform, official_offsets
from ...targets.window import logit_for_mass, window_bias_logits, window_permutation_offsets
from ..._validate import as_bool
from ..protocol import ViTPlan
from ..registry import Strategy, register_strategy
from ._common import check_vit_geometry, positive_scale, vit_settings, write_paper_vproj

#: What the query/key fit reads on a standard ViT: the position alone (the paper) or each block's input on images.
FIT_INPUTS = ("position", "data")
# fit_impulse arguments a standard ViT's init sets from the model; a user value would contradict it.
_SET_BY_THE_MODEL = ("num_heads", "grid_size", "kernel_size", "dim", "head_dim", "rank", "fit_method", "seed",
                     "layers", "offsets", "pseudo_input")
#: The settings a standard ViT's impulse init takes besides fit_impulse's own keywords.
VIT_SETTINGS = {"pos_scale": None, "position_share": None, "fit_input": None, "vproj": True, "vproj_scale": None,
                "qk_bias": None}


def _options(defaults: Optional[dict], given: Optional[dict], what: str) -> dict:
    defaults = dict(defaults or {})
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"options {unknown} do not apply to {what} (known: {sorted(defaults)})")
    return {**defaults, **(given or {})}


def _closed_form_settings(defaults: Optional[dict], fit_method: str, given: dict) -> dict:
    """fit_impulse keywords: the family's defaults for ``fit_method``, then the caller's."""
    return {**((defaults or {}).get(fit_method) or {}), **given}


def impulse_vit(layers, generator, *, seed: Optional[int], fit_method: str, kernel_size: int, fit_kwargs: dict,
                options: dict) -> ViTPlan:
    """The structured init with this package's fit: Q, K of every block in one batched ``fit_impulse`` on
    LN(position embedding), the paper's offsets and value/projection, then the position scale (calibrated unless
    ``pos_scale`` is given) and, with ``fit_input="data"``, a refit of each block on its own input."""
    r = layers.request
    if seed is None:
        raise ValueError("seed=None (the global generators, as the public code) is only for init 'official' or "
                         "'mimetic'; give an int seed")
    given = {**fit_kwargs, **options}
    own = {k: given.pop(k) for k in list(given) if k in VIT_SETTINGS}
    s = vit_settings(own, {**VIT_SETTINGS, **{k: r.defaults.get(k) for k in ("position_share", "fit_input")}},
                     "impulse")
    _check_fit_keywords(given)
    choice(s["fit_input"], "fit_input", FIT_INPUTS)
    pos_scale = positive_scale(s["pos_scale"], "pos_scale")
    if pos_scale is not None and own.get("position_share") is not None:
        raise ValueError("position_share sets the calibrated position scale; it does not apply with an explicit "
                         "pos_scale")
    share = None if pos_scale is not None else _share(s["position_share"])
    if s["qk_bias"] is not None:
        choice(s["qk_bias"], "qk_bias", ("keep", "zero"))
    check_vit_geometry(r, kernel_size, "impulse")
    from ...fitting import fit_impulse
    kwargs = _closed_form_settings(r.defaults, fit_method, given)
    kwargs.setdefault("scale", "auto")
    start = time.perf_counter()
    offsets = official_offsets(r.num_heads, kernel_size)
    res = fit_impulse(r.num_heads, r.grid, kernel_size, r.dim, r.head_dim, fit_method=fit_method, seed=seed,
                      layers=r.depth, offsets=offsets, pseudo_input=layers.pseudo_input(POS_SCALE).float(), **kwargs)
    for i in range(r.depth):
        c = math.sqrt(res.scale / r.scales[i])          # the block's softmax scale · c² = the fit's
        q = (c * res.q[i].to(torch.float64)).transpose(-1, -2).reshape(r.dim, r.dim).float()
        k = (c * res.k[i].to(torch.float64)).transpose(-1, -2).reshape(r.dim, r.dim).float()
        layers.write_qk(i, q, k)
    v_scale = positive_scale(s["vproj_scale"], "vproj_scale") or VPROJ_SCALE
    if as_bool(s["vproj"], "vproj"):
        uniform = numpy_uniform(seed)
        for i in range(r.depth):
            write_paper_vproj(layers, i, uniform, v_scale, mimetic_orientation=False)
    constants = dict(pos_scale=pos_scale, vproj=bool(s["vproj"]), vproj_scale=v_scale, ln_eps=1e-5,
                     offset_order_3x3=list(OFFSET_ORDER_3x3), softmax_scale_of_fit=res.scale,
                     attn_scale=float(r.scales[0]), fit_input=s["fit_input"])
    return ViTPlan(offsets=offsets[None].expand(r.depth, -1, -1).clone(), position_scale=pos_scale,
                   calibrate_share=share, refit=dict(kwargs, fit_method=fit_method)
                   if s["fit_input"] == "data" else None, qk_bias=s["qk_bias"] or "zero",
                   result=dict(fit_method=fit_method, fit_seconds=time.perf_counter() - start, fit_report=res.report,
                            backend=res.report.backend, fit_scale=res.scale), constants=constants)


def _check_fit_keywords(given: dict) -> None:
    """The keywords left for ``fit_impulse``: its own, and none the model sets."""
    import inspect

    from ...fitting import fit_impulse
    bad = sorted(set(given) & set(_SET_BY_THE_MODEL))
    if bad:
        raise ValueError(f"{bad} are set by init_ from the model and cannot be passed")
    paper = sorted(set(given) & {"qk_scale", "compute_dtype"})
    if paper:
        raise ValueError(f"{paper} apply to init 'official' and 'mimetic' (the paper's code); the closed_form / "
                         f"iterative fits set the logit scale themselves (pass target_mass, logit_scale or scale)")
    known = set(inspect.signature(fit_impulse).parameters)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{unknown} are neither settings of the impulse init ({sorted(VIT_SETTINGS)}) nor "
                         f"keywords of fit_impulse")


def _share(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"position_share must be a number in (0, 1) (the share of each query/key input's variance "
                         f"carried by position at init), got {value!r}")
    return float(value)


def impulse_qk(layers, requests, generator, *, seed: int, fit_method: str, kernel_size: int,
               fit_kwargs: Optional[dict]):
    from ...fitting import fit_impulse
    kwargs = dict(fit_kwargs or {})
    if "scale" in kwargs:
        raise ValueError("fit_kwargs must not set 'scale': the fit uses the layer's softmax scale; pass scale= to "
                         "the layer (or model) instead")
    results = []
    groups: Dict[tuple, list] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.batch_key(), []).append(i)
    for gi, idx in enumerate(groups.values()):
        r = requests[idx[0]]
        x = r.pseudo_input
        if x is None:
            raise ValueError("impulse init of query/key layers needs their pseudo-input (the positional part of "
                             "their queries and keys); this layer reports none")
        for j in idx[1:]:
            if not torch.equal(requests[j].pseudo_input, x):
                raise ValueError("impulse init fits layers with equal settings in one batch; their pseudo-inputs "
                                 "differ")
        res = fit_impulse(r.num_heads, r.grid_size, kernel_size, r.dim_in, r.head_dim, fit_method=fit_method,
                          seed=(seed + gi) % 2 ** 63, layers=len(idx), pseudo_input=x, alpha=r.alpha, scale=r.scale,
                          **_closed_form_settings(r.defaults, fit_method, kwargs))
        for n, j in enumerate(idx):
            layers[j].load_qk(res.q[n], res.k[n], res.offsets[n])
        results.append(res)
    return results


def impulse_window_bias(layers, requests, generator, *, seed: int, kernel_size: int, options: Optional[dict]
                        ) -> List[dict]:
    """Per layer: fresh offsets (a random order of the k×k window), the bias table at the impulse logit that puts
    ``window_mass`` on the target key of an interior query."""
    out = []
    for layer, r in zip(layers, requests):
        opts = _options(r.defaults, options, "window biases")
        mass = positive_float(opts["window_mass"], "window_mass")
        half = kernel_size // 2
        if half >= min(r.window):
            raise ValueError(f"kernel_size {kernel_size} reaches past a {r.window[0]}x{r.window[1]} attention "
                             f"window (offsets of ±{half} tokens); use kernel_size <= {2 * min(r.window) - 1}")
        offsets = window_permutation_offsets(r.num_heads, kernel_size, generator)
        logit = logit_for_mass(mass, r.window[0] * r.window[1])
        layer.load_window_bias(window_bias_logits(offsets, r.window, logit), offsets)
        out.append({"offsets": offsets, "logit": logit, "window_mass": mass})
    return out


def impulse_token_mix(layers, requests, generator, *, seed: int, kernel_size: int, options: Optional[dict]
                      ) -> List[dict]:
    """Per layer: round offsets in a fresh random order of the k×k window (every offset used once there are k²
    rounds), the token MLP set to that bank of shifts."""
    out = []
    for layer, r in zip(layers, requests):
        opts = _options(r.defaults, options, "token-mixing MLPs")
        gain = positive_float(opts["gain"], "gain")
        if kernel_size // 2 >= max(r.grid):
            raise ValueError(f"kernel_size {kernel_size} is wider than the {r.grid[0]}x{r.grid[1]} token grid")
        n = r.grid[0] * r.grid[1]
        rounds = -(-r.hidden // n)
        offsets = window_permutation_offsets(rounds, kernel_size, generator)
        w1, b1, w2, b2, _, _ = impulse_token_mlp(r.grid, r.hidden, offsets, gain)
        layer.load_token_mix(w1, b1, w2, b2, offsets)
        out.append({"offsets": offsets, "gain": gain, "rounds": rounds})
    return out


#: What reaches each handler from the command line: fit_impulse's keywords the flags set, the standard-ViT position
#: settings, the Swin window mass and the Mixer gain.
SETTINGS = {"vit": ("fit_method", "kernel_size", "target", "target_mass", "steps", "backend", "position_share",
                    "pos_scale", "fit_input"),
            "qk": ("fit_method", "kernel_size", "target", "target_mass", "steps", "backend", "offsets"),
            "window_bias": ("kernel_size", "window_mass"), "token_mix": ("kernel_size", "gain")}

STRATEGY = register_strategy(Strategy(
    "impulse", "each head starts as an impulse (shift) filter: fitted query/key maps, window-bias logits (Swin) or "
    "a bank of shifts in the token-mixing MLP (MLP-Mixer)",
    vit=impulse_vit, qk=impulse_qk, window_bias=impulse_window_bias, token_mix=impulse_token_mix,
    needs_pseudo_input=True, fit_methods=("closed_form", "iterative"), settings=SETTINGS))
