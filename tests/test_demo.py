"""The demo's verdict line: a pure function of the per-seed accuracies (the end-to-end demo run is in test_cli)."""
import re
import statistics

import pytest

from impulse_attn.demo import verdict


def _numbers(line):
    """(mean, spread, per-seed gains) as printed."""
    m = re.search(r"mean ([+-]\d+\.\d) ± (\d+\.\d) points over (\d+) seeds; per seed: (.*)\)", line)
    assert m, line
    gains = [float(g) for g in m.group(4).split(", ")]
    assert int(m.group(3)) == len(gains)
    return float(m.group(1)), float(m.group(2)), gains


def test_ahead_when_the_mean_gain_exceeds_the_spread():
    line = verdict([0.30, 0.32], [0.33, 0.34])           # gains +3, +2: mean 2.5, spread 0.7
    assert line.startswith("impulse init ends ahead of random init by 2.5 points")
    mean, spread, gains = _numbers(line)
    assert gains == [3.0, 2.0] and mean == 2.5 and spread == pytest.approx(statistics.stdev([3, 2]), abs=0.05)


def test_behind_when_the_mean_gain_is_below_minus_the_spread():
    line = verdict([0.33, 0.34], [0.30, 0.32])
    assert line.startswith("impulse init ends behind random init by 2.5 points")
    mean, spread, gains = _numbers(line)
    assert gains == [-3.0, -2.0] and mean == -2.5 and spread == pytest.approx(0.7, abs=0.05)


def test_level_when_the_mean_gain_is_within_the_spread():
    # gains +1, -0.5, +2: all but one positive, mean 0.83 < spread 1.26
    line = verdict([0.40, 0.40, 0.40], [0.41, 0.395, 0.42])
    assert line.startswith("impulse and random init end level within the seed spread")
    mean, spread, gains = _numbers(line)
    assert gains == [1.0, -0.5, 2.0]
    assert mean == pytest.approx(0.8, abs=0.05) and spread == pytest.approx(statistics.stdev(gains), abs=0.05)


def test_same_sign_gains_with_a_wide_spread_are_level_not_ahead():
    # every seed ahead, but by 0.2 and 6: the mean (3.1) lies within the spread (4.1)
    line = verdict([0.50, 0.50], [0.502, 0.56])
    assert "level within the seed spread" in line
    mean, spread, _ = _numbers(line)
    assert abs(mean) <= spread


def test_spread_decides_between_level_and_ahead_at_the_same_mean():
    tight = verdict([0.5, 0.5, 0.5], [0.51, 0.51, 0.51])  # +1 each: spread 0
    wide = verdict([0.5, 0.5, 0.5], [0.48, 0.51, 0.54])   # -2, +1, +4: mean 1, spread 3
    assert "ahead" in tight and _numbers(tight)[:2] == (1.0, 0.0)
    assert "level" in wide and _numbers(wide)[:2] == (1.0, 3.0)


def test_one_seed_and_no_gain():
    assert "ahead" in verdict([0.5], [0.52]) and "behind" in verdict([0.52], [0.5])
    assert "level" in verdict([0.5, 0.6], [0.5, 0.6])


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="one accuracy per seed"):
        verdict([0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match="one accuracy per seed"):
        verdict([], [])
