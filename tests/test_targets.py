import pytest
import torch
from hypothesis import given, settings, strategies as st

from impulse_attn.targets import (cycle_offsets, draw_offsets, impulse_targets, separable_logit_target, sincos_2d,
                                  valid_rows)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), m=st.integers(-3, 3), n=st.integers(-3, 3))
def test_targets_are_exact_shifts(h, w, m, n):
    t = impulse_targets([[m, n]], (h, w), dtype=torch.float64)[0]
    img = torch.randn(h, w, dtype=torch.float64)
    shifted = (t @ img.flatten()).reshape(h, w)
    expect = torch.zeros(h, w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            if 0 <= r + m < h and 0 <= c + n < w:
                expect[r, c] = img[r + m, c + n]
    assert torch.equal(shifted, expect)
    # all-zero rows exactly where the shift leaves the grid; every other row holds a single 1
    valid = valid_rows([[m, n]], (h, w))[0]
    assert torch.equal(t.sum(1) == 0, ~valid)
    assert torch.all(t.sum(1)[valid] == 1)


def test_draw_offsets_seeded_and_in_window():
    a = draw_offsets(200, 5, seed=3)
    b = draw_offsets(200, 5, seed=3)
    assert torch.equal(a, b)
    assert a.abs().max() <= 2
    assert len({tuple(o) for o in a.tolist()}) == 25  # with replacement, all 25 positions show up in 200 draws
    assert not torch.equal(a, draw_offsets(200, 5, seed=4))


def test_cycle_offsets_cover_window():
    o = cycle_offsets(9, 3)
    assert {tuple(x) for x in o.tolist()} == {(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)}


def test_separable_logits_peak_on_target():
    offs = torch.tensor([[1, -2], [0, 0]])
    lt = separable_logit_target(offs, (5, 7))
    t = impulse_targets(offs, (5, 7), dtype=torch.float64)
    valid = valid_rows(offs, (5, 7))
    assert torch.all(lt.amax(-1)[valid] == 2)
    assert torch.equal((lt == 2).to(t.dtype)[valid], t[valid])


def test_sincos_layout_and_values():
    pe = sincos_2d((3, 5), 16, dtype=torch.float64)
    assert pe.shape == (15, 16)
    # token (r=2, c=4): x = 4 feeds the first half, y = 2 the second; omega_0 = 1
    assert pe[2 * 5 + 4, 0] == pytest.approx(torch.sin(torch.tensor(4.0, dtype=torch.float64)).item())
    assert pe[2 * 5 + 4, 8] == pytest.approx(torch.sin(torch.tensor(2.0, dtype=torch.float64)).item())
    assert torch.allclose(pe[:, :4] ** 2 + pe[:, 4:8] ** 2, torch.ones(15, 4, dtype=torch.float64))


@pytest.mark.parametrize("dim", [6, 10, 4])
def test_sincos_bad_dim(dim):
    with pytest.raises(ValueError, match="dim"):
        sincos_2d(4, dim)
