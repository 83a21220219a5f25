"""Map statistics and `impulse-attn inspect`: trained maps next to the maps at init."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from impulse_attn import cli
from impulse_attn.analysis import head_stats, map_change
from impulse_attn.targets import impulse_targets
from impulse_attn.training import TrainConfig, UserError, train
from impulse_attn.training.inspect import inspect_run

GRID = (5, 7)  # non-square on purpose


def test_pure_shift_maps_are_recognized():
    offsets = torch.tensor([[1, -2], [0, 0], [-1, 1]])
    t = impulse_targets(offsets, GRID).double()
    # rows whose shift leaves the grid are all-zero targets: give them a uniform row so every row is a distribution
    t = torch.where(t.sum(-1, keepdim=True) == 0, torch.full_like(t, 1 / 35), t)
    stats = head_stats([t[None]], GRID, kernel_size=5, offsets=[offsets])
    for s, (dy, dx) in zip(stats, offsets.tolist()):
        assert s.target_offset == (dy, dx) and s.target_mass == pytest.approx(1.0)
        assert s.best_offset == (dy, dx) and s.best_offset_mass == pytest.approx(1.0)
    assert stats[1].distance < stats[2].distance < stats[0].distance  # |(0,0)| < |(-1,1)| < |(1,-2)| (uniform rows add)


def test_uniform_maps_have_no_preferred_offset():
    n = GRID[0] * GRID[1]
    p = torch.full((2, 3, n, n), 1.0 / n)
    for s in head_stats([p], GRID, kernel_size=3):
        assert s.best_offset_mass == pytest.approx(1 / n)
        assert s.entropy == pytest.approx(math.log(n))
        assert s.target_mass is None and s.target_offset is None
    assert torch.equal(map_change(p, p), torch.zeros(3, dtype=torch.float64))


def test_map_change_is_total_variation():
    a = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    b = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    assert float(map_change(a, b)[0]) == pytest.approx(0.5)   # rows: 1 and 0, mean 0.5
    with pytest.raises(ValueError, match="same shape"):
        map_change(a, b[..., :1])


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match=r"maps\[0\] must have shape"):
        head_stats([torch.zeros(1, 2, 4, 4)], GRID)


TINY = dict(dataset="synthetic", synthetic_train=320, synthetic_test=40, synthetic_classes=2, image_size=16,
            patch_size=2, dim=32, depth=2, num_heads=4, head_dim=8, mlp_dim=64, kernel_size=3, epochs=2, batch_size=16,
            lr=3e-3, progress=False, alpha=0.0)


def test_inspect_a_trained_impulse_run(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(**TINY, out=str(tmp_path / "run"))
    train(cfg, log=lambda s: None)
    res = inspect_run(tmp_path / "run", images=8, log=lambda s: None)
    data = json.loads((tmp_path / "run" / "inspect.json").read_text())
    assert res.picture.is_file() and len(data["heads"]) == 2 * 4 and len(data["layers"]) == 2
    for row in data["heads"]:
        # alpha 0: the maps at init are the fitted ones, input independent; the model's default fit puts 0.1 on
        # the target (6 times the uniform 1/64), more than on any other single offset
        assert row["init"]["target_mass"] > 0.05
        assert tuple(row["init"]["best_offset"]) == tuple(row["init"]["target_offset"])
        assert row["map_change"] > 0                                   # training moved every map
    assert "| 0 |" in res.table and "→" in res.table


def test_inspect_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    cfg = TrainConfig(**{**TINY, "model": "convmixer", "epochs": 1}, out=str(tmp_path / "cm"))
    train(cfg, log=lambda s: None)
    with pytest.raises(UserError, match="no attention maps"):
        inspect_run(tmp_path / "cm")
