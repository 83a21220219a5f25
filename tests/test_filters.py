import pytest
import torch
import torch.nn.functional as F

from impulse_attn.filters import BANKS, bank_report, conv_as_attention, filter_bank


@pytest.mark.parametrize("k,grid", [(1, (4, 4)), (3, (5, 7)), (5, (9, 4)), (7, (6, 11)), (3, (1, 6))])
def test_conv_as_attention_equals_conv2d(k, grid):
    g = torch.Generator().manual_seed(k)
    weight = torch.randn(3, k, k, generator=g, dtype=torch.float64)
    mats = conv_as_attention(weight, grid)
    h, w = grid
    x = torch.randn(h, w, generator=g, dtype=torch.float64)
    for f in range(3):
        expect = F.conv2d(x[None, None], weight[f][None, None], padding=k // 2).flatten()
        torch.testing.assert_close(mats[f] @ x.flatten(), expect, rtol=0, atol=1e-12)


def test_conv_as_attention_single_filter_shape():
    assert conv_as_attention(torch.ones(3, 3), (4, 6)).shape == (24, 24)


@pytest.mark.parametrize("bad", [torch.ones(2, 2), torch.ones(3, 5), torch.ones(2, 3, 4, 4)])
def test_conv_as_attention_rejects_bad_weight(bad):
    with pytest.raises(ValueError, match="weight"):
        conv_as_attention(bad, (4, 4))


@pytest.mark.parametrize("kind", BANKS)
def test_banks_shapes_and_seeding(kind):
    a = filter_bank(kind, 50, 3, seed=1)
    assert a.shape == (50, 3, 3)
    assert torch.equal(a, filter_bank(kind, 50, 3, seed=1))


def test_bank_ranks():
    assert bank_report(filter_bank("random", 64, 3)).full_rank
    assert bank_report(filter_bank("impulse", 200, 3)).full_rank
    box = bank_report(filter_bank("box", 64, 3))  # the averaging box: every filter identical
    assert box.rank == 1 and not box.full_rank
    few = bank_report(filter_bank("impulse", 4, 5))
    assert few.rank <= 4 and few.min_redundancy == 0


def test_bank_report_counts_impulse_positions():
    bank = torch.zeros(5, 3, 3)
    bank[0, 1, 1] = bank[1, 1, 1] = bank[2, 0, 2] = bank[3, 2, 0] = bank[4, 0, 0] = 1
    rep = bank_report(bank)
    assert rep.impulse_counts[(0, 0)] == 2 and rep.impulse_counts[(-1, 1)] == 1
    assert rep.rank == 4 and rep.min_redundancy == 0


def test_bank_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        filter_bank("sobel", 3)
    with pytest.raises(ValueError, match="kernel_size"):
        filter_bank("random", 3, 4)
