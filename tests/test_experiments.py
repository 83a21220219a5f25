"""The experiment drivers' arithmetic: the study's paired gains, the rule that picks what_pays_off's size, its
variant filter, and the tables/figures they write, on run folders made up here (no training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import data_efficiency  # noqa: E402
import mechanism_table  # noqa: E402
import what_pays_off  # noqa: E402


def _run(root: Path, size: int, variant: str, seed: int, val: float, test: float = 0.3, **extra) -> None:
    d = root / f"pc{size}" / variant / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "final": {"val": val, "test": test}, "final_acc": val, "epochs": 800 * 128 // (size * 10),
        "train_seconds": 1.0, **extra}))


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "study"
    # size 25: gains +2, +4 (mean +3); size 50: gain +3 (one seed); size 100: +1; a seed without a random partner
    for seed, (r, i) in enumerate([(0.30, 0.32), (0.31, 0.35)]):
        _run(root, 25, "random", seed, r)
        _run(root, 25, "impulse_closed_form", seed, i)
    _run(root, 50, "random", 0, 0.40)
    _run(root, 50, "impulse_closed_form", 0, 0.43)
    _run(root, 50, "impulse_closed_form", 7, 0.99)
    _run(root, 100, "random", 0, 0.50)
    _run(root, 100, "impulse_closed_form", 0, 0.51)
    return root


def test_study_table_pairs_gains_by_seed(study):
    results = data_efficiency.load(study)
    assert sorted(results) == [25, 50, 100]
    text = data_efficiency.table(results)
    row = next(line for line in text.splitlines() if line.startswith("| 25 |") and "impulse_closed_form" in line)
    assert row.rstrip(" |").endswith("+3.0 ± 1.4")  # gains 2 and 4 points
    row50 = next(line for line in text.splitlines() if line.startswith("| 50 |") and "impulse" in line)
    assert row50.rstrip(" |").endswith("+3.0")  # seed 7 has no random partner and is left out of the gain
    assert data_efficiency.plot(results, study / "fig.png").stat().st_size > 0


def test_a_run_without_val_accuracy_is_refused_not_read_from_another_split(study):
    # the study compares on val; a run evaluated on test alone must stop the table, not pass its test accuracy off
    d = study / "pc25" / "impulse_closed_form" / "seed5"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"final": {"test": 0.9}, "final_acc": 0.9, "epochs": 400}))
    with pytest.raises(SystemExit, match=r"seed5.*no final val accuracy.*\['test'\]"):
        data_efficiency.load(study)


def test_pick_size_takes_the_largest_mean_gain_and_the_smaller_size_on_ties(study):
    results = data_efficiency.load(study)
    results[25]["impulse (closed form)"] = results[25].pop("impulse_closed_form")
    results[50]["impulse (closed form)"] = results[50].pop("impulse_closed_form")
    results[100]["impulse (closed form)"] = results[100].pop("impulse_closed_form")
    assert what_pays_off.pick_size(results) == 25  # +3.0 at 25 and at 50 (seed 7 unpaired): the smaller size
    results[50]["impulse (closed form)"][0]["val"] = 0.45
    assert what_pays_off.pick_size(results) == 50
    with pytest.raises(SystemExit):
        what_pays_off.pick_size({25: {"random": {}}})


def test_what_pays_off_rows_pair_with_the_study(study, tmp_path):
    runs = tmp_path / "pays_off"
    _run(runs, 25, "random_9_heads", 0, 0.33)
    _run(runs, 25, "random_9_heads", 1, 0.30)
    base = data_efficiency.load(study)[25]
    base = {"random": base["random"], "impulse (closed form)": base["impulse_closed_form"]}
    variants = {"random, 9 heads": data_efficiency.load(runs)[25]["random_9_heads"]}
    rs = what_pays_off.rows(25, variants, base)
    assert [r["label"] for r in rs] == ["random (study)", "impulse, closed form (study)", "random, 9 heads"]
    assert rs[2]["vs_random"] == pytest.approx([3.0, -1.0])
    assert rs[2]["vs_default"] == pytest.approx([1.0, -5.0])
    assert rs[0]["vs_random"] == [] and rs[1]["vs_default"] == []
    text = what_pays_off.table(25, rs)
    assert "| random, 9 heads | 0,1 | 31.5 ± 2.1 |" in text
    assert what_pays_off.plot(25, rs, tmp_path / "p.png").stat().st_size > 0


def test_what_pays_off_pairs_nine_heads_with_its_own_control(study, tmp_path):
    # k = 3 with 9 heads changes the head count too, so it is also paired with random init at 9 heads, seed by seed.
    runs = tmp_path / "pays_off"
    for seed, (r9, i9) in enumerate([(0.33, 0.36), (0.30, 0.31)]):
        _run(runs, 25, "random_9_heads", seed, r9)
        _run(runs, 25, "impulse_k3_9_heads_cycled", seed, i9)
    study_runs = data_efficiency.load(study)[25]
    base = {"random": study_runs["random"], "impulse (closed form)": study_runs["impulse_closed_form"]}
    found = data_efficiency.load(runs)[25]
    rs = what_pays_off.rows(25, {"impulse k3, 9 heads, cycled": found["impulse_k3_9_heads_cycled"],
                                 "random, 9 heads": found["random_9_heads"]}, base)
    nine = next(r for r in rs if r["label"] == "impulse k3, 9 heads, cycled")
    assert nine["vs_control"] == pytest.approx([3.0, 1.0]) and nine["control"] == "random, 9 heads"
    assert all(r["vs_control"] == [] for r in rs if r is not nine)
    assert "| +2.0 ± 1.4 (random, 9 heads) |" in what_pays_off.table(25, rs)
    # without its control's runs the column stays empty instead of pairing with nothing
    alone = what_pays_off.rows(25, {"impulse k3, 9 heads, cycled": found["impulse_k3_9_heads_cycled"]}, base)
    assert alone[-1]["vs_control"] == [] and alone[-1]["control"] is None


def test_script_labels_match_the_variants_that_slug_to_distinct_folders():
    from impulse_attn.training.compare import slug
    labels = what_pays_off.script_labels()
    assert len(labels) == 10 and labels[0] == "impulse (default)"
    assert not any("mode II:" in label + ":" for label in labels)  # Model II is Model I at alpha 0
    assert len({slug(label) for label in labels}) == len(labels)


@pytest.mark.parametrize("only, expect", [("9 heads", ["impulse k3, 9 heads, cycled", "random, 9 heads"]),
                                          ("value", ["impulse + value/proj", "random + value/proj"])])
def test_only_filters_the_variants(only, expect):
    env = dict(os.environ, PYTHON="echo", SIZE="25", SEEDS="0", ONLY=only)
    out = subprocess.run(["bash", str(ROOT / "experiments" / "what_pays_off.sh")], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()[0]
    labels = out.split("--variants ", 1)[1]
    assert [label for label in what_pays_off.script_labels() if label + ":" in labels] == expect


def test_only_refuses_a_filter_that_matches_nothing():
    env = dict(os.environ, PYTHON="echo", SIZE="25", SEEDS="0", ONLY="no such variant")
    r = subprocess.run(["bash", str(ROOT / "experiments" / "what_pays_off.sh")], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "matches no variant" in r.stderr


def test_mechanism_figure(tmp_path):
    by = {"random": [{"seed": 0, "val_acc": [0.2, 0.3, 0.4], "final": 0.4}],
          "recipe": [{"seed": 0, "val_acc": [0.25, 0.35, 0.42], "final": 0.42},
                     {"seed": 1, "val_acc": [0.27, 0.33, 0.40], "final": 0.40}]}
    assert mechanism_table.plot(by, tmp_path / "m.png").stat().st_size > 0


def test_families_table_pairs_each_init_with_the_familys_own_by_seed(tmp_path):
    import families
    root = tmp_path / "families"
    for seed, (own, imp) in enumerate([(0.30, 0.33), (0.32, 0.33)]):
        _run(root / "swin", 25, "own", seed, own)
        _run(root / "swin", 25, "impulse", seed, imp)
    _run(root / "swin", 25, "impulse", 5, 0.90)          # no own run of seed 5: not paired
    _run(root / "mixer", 100, "impulse", 0, 0.40)         # no own run at all
    _run(root / "mixer", 100, "impulse_g2", 0, 0.47)      # a default-sweep run: only with sweeps=True
    text = families.table(root)
    assert "impulse_g2" not in text and "| impulse_g2 |" in families.table(root, sweeps=True)
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()[2:]}
    assert "| 2 | 31.0 ± 1.4 |" in rows[("swin", "25", "own")]
    assert rows[("swin", "25", "impulse")].rstrip().endswith("| +2.0 ± 1.4 |")
    assert rows[("mixer", "100", "impulse")].rstrip().endswith("| — |")
    assert list(rows)[0] == ("mixer", "100", "impulse")     # families in name order, own init first within one


def _prior_run(root: Path, size: int, variant: str, seed: int, val: float, hit=None, share=None) -> None:
    _run(root, size, variant, seed, val, init={"on_data": {"mean": {"argmax_hit": hit, "position_share": share}}})


def test_prior_on_data_pairs_by_seed_reads_widths_and_the_wider_runs(tmp_path):
    import prior_on_data
    root = tmp_path / "prior"
    # timm width 64: gains +1 (hit 0.2) and +3 (hit 0.9); width 128: one pair, gain -2 (hit 0.1)
    for seed, (own, imp, hit) in enumerate([(0.30, 0.31, 0.2), (0.30, 0.33, 0.9)]):
        _prior_run(root / "timm_vit" / "d64", 25, "own", seed, own, share=0.02)
        _prior_run(root / "timm_vit" / "d64", 25, "calibrated", seed, imp, hit=hit, share=0.98)
    _prior_run(root / "timm_vit" / "d128", 25, "own", 0, 0.40)
    _prior_run(root / "timm_vit" / "d128", 25, "calibrated", 0, 0.38, hit=0.1, share=0.5)
    _prior_run(root / "wide" / "swin", 25, "own", 0, 0.20)
    _prior_run(root / "wide" / "swin", 25, "impulse", 0, 0.25, hit=1.0)
    rows = prior_on_data.collect(root)
    text = prior_on_data.table(rows)
    lines = {tuple(c.strip() for c in line.split("|")[1:5]): line for line in text.splitlines()[2:]}
    assert lines[("timm_vit", "64", "25", "calibrated")].rstrip().endswith("| +2.0 ± 1.4 |")
    assert "| 0.55 | — | 0.98 |" in lines[("timm_vit", "64", "25", "calibrated")]   # hit: mean of 0.2 and 0.9
    assert lines[("timm_vit", "128", "25", "calibrated")].rstrip().endswith("| -2.0 |")
    assert lines[("swin (wider)", "—", "25", "impulse")].rstrip().endswith("| +5.0 |")
    pairs = prior_on_data.pairs(rows)
    assert sorted(round(p[2], 6) for p in pairs) == [-2.0, 1.0, 3.0, 5.0]
    assert {p[3] for p in pairs} == {"timm_vit d64 pc25 calibrated", "timm_vit d128 pc25 calibrated",
                                     "swin (wider) pc25 impulse"}
    # gain against hit: (0.2, 1), (0.9, 3), (0.1, -2), (1.0, 5): a clear positive correlation
    assert "4 paired runs" in prior_on_data.relation(rows)
    assert prior_on_data.correlation([p[0] for p in pairs], [p[2] for p in pairs]) > 0.8
    assert prior_on_data.figure(rows, tmp_path / "f.png").is_file()
