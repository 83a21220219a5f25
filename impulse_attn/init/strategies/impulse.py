"""impulse: every head (or token-mixing unit) starts as an impulse filter, a shift by one offset of a k×k window.

Three realizations, one per layer kind:

- query/key layers: Q, K fitted so that the softmax map on the layer's pseudo-input is the head's impulse map
  (``fitting.fit_impulse``; the closed form by default);
- window biases (Swin): the relative position bias table holds the impulse logit exactly (``targets.window``);
- token-mixing MLPs (MLP-Mixer): a bank of shifts over the hidden units (``filters.token_mixing``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..._validate import positive_float
from ...filters.token_mixing import impulse_token_mlp
from ...targets.window import logit_for_mass, window_bias_logits, window_permutation_offsets
from ..registry import Strategy, register_strategy

# The closed form's defaults in a model: a local, soft map (docs/RESULTS.md, "Why the closed form lagged the
# recipe"). fit_impulse itself keeps the published values (target "impulse", mass 0.3).
CLOSED_FORM_DEFAULTS = {"target": "laplace", "target_mass": 0.1}
#: Window-bias defaults (Swin): mass on the target key of an interior query, chosen on val/ among 0.3, 0.5, 0.7
#: (docs/RESULTS.md, "Every family": 34.2, 35.6, 35.9 at 100 images per class, seed 0).
WINDOW_DEFAULTS = {"target_mass": 0.7}
#: Token-mixing defaults (MLP-Mixer): the gain of the shift bank, chosen on val/ among 0.5, 1, 2 (docs/RESULTS.md,
#: "Every family": 44.0, 44.4, 47.1 at 100 images per class, seed 0).
TOKEN_MIX_DEFAULTS = {"gain": 2.0}


def _options(defaults: dict, given: Optional[dict], what: str) -> dict:
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"options {unknown} do not apply to {what} (known: {sorted(defaults)})")
    return {**defaults, **(given or {})}


def impulse_qk(layers, requests, generator, *, seed: int, fit_method: str, kernel_size: int,
               fit_kwargs: Optional[dict]):
    from ...fitting import fit_impulse
    kwargs = dict(fit_kwargs or {})
    if fit_method == "closed_form":
        kwargs = {**CLOSED_FORM_DEFAULTS, **kwargs}
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
                          **kwargs)
        for n, j in enumerate(idx):
            layers[j].load_qk(res.q[n], res.k[n], res.offsets[n])
        results.append(res)
    return results


def impulse_window_bias(layers, requests, generator, *, seed: int, kernel_size: int, options: Optional[dict]
                        ) -> List[dict]:
    """Per layer: fresh offsets (a random order of the k×k window), the bias table at the impulse logit that puts
    ``target_mass`` on the target key of an interior query."""
    opts = _options(WINDOW_DEFAULTS, options, "window biases")
    opts["target_mass"] = positive_float(opts["target_mass"], "target_mass")
    out = []
    for layer, r in zip(layers, requests):
        half = kernel_size // 2
        if half >= min(r.window):
            raise ValueError(f"kernel_size {kernel_size} reaches past a {r.window[0]}x{r.window[1]} attention "
                             f"window (offsets of ±{half} tokens); use kernel_size <= {2 * min(r.window) - 1}")
        offsets = window_permutation_offsets(r.num_heads, kernel_size, generator)
        logit = logit_for_mass(opts["target_mass"], r.window[0] * r.window[1])
        layer.load_window_bias(window_bias_logits(offsets, r.window, logit), offsets)
        out.append({"offsets": offsets, "logit": logit, "target_mass": opts["target_mass"]})
    return out


def impulse_token_mix(layers, requests, generator, *, seed: int, kernel_size: int, options: Optional[dict]
                      ) -> List[dict]:
    """Per layer: round offsets in a fresh random order of the k×k window (every offset used once there are k²
    rounds), the token MLP set to that bank of shifts."""
    opts = _options(TOKEN_MIX_DEFAULTS, options, "token-mixing MLPs")
    opts["gain"] = positive_float(opts["gain"], "gain")
    out = []
    for layer, r in zip(layers, requests):
        if kernel_size // 2 >= max(r.grid):
            raise ValueError(f"kernel_size {kernel_size} is wider than the {r.grid[0]}x{r.grid[1]} token grid")
        n = r.grid[0] * r.grid[1]
        rounds = -(-r.hidden // n)
        offsets = window_permutation_offsets(rounds, kernel_size, generator)
        w1, b1, w2, b2, _, _ = impulse_token_mlp(r.grid, r.hidden, offsets, opts["gain"])
        layer.load_token_mix(w1, b1, w2, b2, offsets)
        out.append({"offsets": offsets, "gain": opts["gain"], "rounds": rounds})
    return out


STRATEGY = register_strategy(Strategy(
    "impulse", "each head starts as an impulse (shift) filter: fitted query/key maps, window-bias logits (Swin) or "
    "a bank of shifts in the token-mixing MLP (MLP-Mixer)",
    qk=impulse_qk, window_bias=impulse_window_bias, token_mix=impulse_token_mix, needs_pseudo_input=True))
