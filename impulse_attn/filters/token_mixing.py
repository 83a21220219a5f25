"""A token-mixing MLP (MLP-Mixer) that mixes tokens like a bank of impulse (shift) filters at init.

The token MLP maps the N = H·W values of one channel through fc1 (N → hidden), an activation and fc2
(hidden → N), with the same weights for every channel: unlike a depthwise convolution it cannot give each channel
its own filter. What it can be is a bank of shifts over its hidden units (docs/families.md, "MLP-Mixer"):

- hidden unit p belongs to round r = p // N and has an anchor token a_p; round r has one offset o_r (all its
  units shift by the same amount: translation-equivariant, like a convolution);
- fc1 row p is one-hot at token a_p + o_r (zero where that falls off the grid: zero padding), fc2 column p is
  one-hot at a_p with weight gain / (units anchored at a_p), biases 0;
- so token i's output is gain · mean over its units of act(x[i + o_r]): with ⌈hidden / N⌉ rounds, a nonlinear
  filter with one tap per round. Every hidden unit is used; a partial last round spreads its anchors evenly over
  the grid.
"""
from __future__ import annotations

import torch

from .._validate import grid_pair, positive_int


def impulse_token_mlp(grid_size, hidden: int, round_offsets: torch.Tensor, gain: float = 1.0):
    """w1 (hidden, N), b1 (hidden,), w2 (N, hidden), b2 (N,) as float32, for round offsets (rounds, 2) with
    rounds = ⌈hidden / N⌉ (row, col) shifts. Returns (w1, b1, w2, b2, anchors (hidden,), unit_offsets (hidden, 2))."""
    gh, gw = grid_pair(grid_size)
    n = gh * gw
    hidden = positive_int(hidden, "hidden")
    rounds = -(-hidden // n)
    round_offsets = torch.as_tensor(round_offsets).long()
    if round_offsets.shape != (rounds, 2):
        raise ValueError(f"round_offsets must have shape ({rounds}, 2) for {hidden} hidden units over {n} tokens, "
                         f"got {tuple(round_offsets.shape)}")
    p = torch.arange(hidden)
    r = p // n
    in_round = torch.full((rounds,), n)
    in_round[-1] = hidden - (rounds - 1) * n
    q = p - r * n
    anchors = (q * n) // in_round[r]                     # a full round: q itself; a partial one: spread evenly
    ar, ac = anchors // gw, anchors % gw
    unit_off = round_offsets[r]
    tr, tc = ar + unit_off[:, 0], ac + unit_off[:, 1]
    inside = (tr >= 0) & (tr < gh) & (tc >= 0) & (tc < gw)
    w1 = torch.zeros(hidden, n)
    w1[p[inside], (tr * gw + tc)[inside]] = 1.0
    count = torch.bincount(anchors, minlength=n).clamp(min=1).float()
    w2 = torch.zeros(n, hidden)
    w2[anchors, p] = gain / count[anchors]
    return w1, torch.zeros(hidden), w2, torch.zeros(n), anchors, unit_off
