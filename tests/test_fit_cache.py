"""The disk cache of fits (fitting/cache.py) and the labelled non-faithful fast fit (fitting/fast.py).

These run on the reference backend, so they need no compiled extension; the fast fit's kernel path is compared
with the faithful kernel fit where the extension exists.

The entries' checksum is not tested here: a cache that skipped it (served an entry without comparing its stored
SHA-256) passes every test of this file. tests/test_persistence.py guards it:
test_flipped_sign_bit_in_a_cached_q_is_refitted_not_served (a damaged tensor is refitted, not served) and
test_cache_entry_checksum_covers_meta (an edited meta is caught too).
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

from impulse_attn import fit_impulse
from impulse_attn.fitting import cache as cache_mod
from impulse_attn.fitting.cache import FitCache, cache_key, tensor_digest
from impulse_attn.fitting.fast import fit_iterative_fast, representatives
from impulse_attn.fitting.iterative import init_qk
from impulse_attn.fitting.reduced import fit_iterative_factored
from impulse_attn.targets import impulse_targets, sincos_2d

SMALL = dict(num_heads=3, grid_size=(5, 6), kernel_size=3, dim=32, head_dim=8, steps=20, lr=1e-3, scale=0.5, seed=1,
             backend="reference", warn=False)


def _entries(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".pt"))


@pytest.mark.parametrize("fit_method", ["iterative", "closed_form"])
def test_second_fit_is_a_hit_with_identical_tensors(tmp_path, fit_method):
    first = fit_impulse(**SMALL, fit_method=fit_method, cache_dir=tmp_path)
    second = fit_impulse(**SMALL, fit_method=fit_method, cache_dir=tmp_path)
    assert first.report.extra["cache"] == "miss" and second.report.extra["cache"] == "hit"
    assert torch.equal(first.q, second.q) and torch.equal(first.k, second.k)
    assert second.report.mse == first.report.mse
    assert len(_entries(tmp_path)) == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temporary left behind
    if fit_method == "closed_form":
        assert second.report.extra["logit_scale"] == first.report.extra["logit_scale"]


@pytest.mark.parametrize("change", [dict(seed=2), dict(steps=21), dict(lr=1.1e-3), dict(scale=0.5000001),
                                    dict(renorm="columns"), dict(offsets=[[0, 1], [1, 1], [-1, 0]]),
                                    dict(alpha=0.1), dict(head_dim=4)])
def test_any_input_that_matters_changes_the_key(tmp_path, change):
    fit_impulse(**SMALL, cache_dir=tmp_path)
    other = fit_impulse(**dict(SMALL, **change), cache_dir=tmp_path)
    assert other.report.extra["cache"] == "miss"
    assert len(_entries(tmp_path)) == 2


def test_passing_the_offsets_the_seed_would_draw_gives_the_same_fit_and_entry(tmp_path):
    drawn = fit_impulse(**SMALL)
    given = fit_impulse(**SMALL, offsets=drawn.offsets[0].tolist())
    assert torch.equal(drawn.q, given.q) and torch.equal(drawn.k, given.k)
    # so a cache hit across the two spellings returns the right tensors
    fit_impulse(**SMALL, cache_dir=tmp_path)
    hit = fit_impulse(**SMALL, offsets=drawn.offsets[0].tolist(), cache_dir=tmp_path)
    assert torch.equal(hit.q, drawn.q)


def test_every_spec_field_is_in_the_key():
    import dataclasses

    from impulse_attn.fitting.spec import FitSpec, make_spec
    spec = make_spec(3, (5, 6), 3, 32, 8, "iterative", 20, 1, "reference", layers=1, offsets=None, scale=0.5,
                     lr=1e-3, renorm_every=100, renorm="code", alpha=0.0, pseudo_input=None, target="impulse",
                     target_mass=0.3, logit_scale=None, pinv_rtol=0.03, noise_std=0.0, dedup=False, tol=None,
                     check_every=100)
    base = cache_key(spec.key_fields())
    other = {"num_heads": 4, "grid_size": (6, 5), "kernel_size": 5, "dim": 36, "head_dim": 4,
             "fit_method": "closed_form", "layers": 2, "seed": 2, "offsets": (((0, 1), (1, 0), (0, 0)),),
             "scale": 0.25, "alpha": 0.1,
             "pseudo_input": torch.zeros(30, 32), "backend": "cpp", "steps": 21, "lr": 2e-3, "renorm_every": 50,
             "renorm": "none", "dedup": True, "tol": 0.1, "check_every": 10, "target": "laplace", "target_mass": 0.2,
             "logit_scale": 3.0, "pinv_rtol": 0.05, "noise_std": 0.1}
    names = [f.name for f in dataclasses.fields(FitSpec)]
    assert sorted(names) == sorted(other), "a new FitSpec field needs a value here"
    for name in names:
        changed = dataclasses.replace(spec, **{name: other[name]})
        assert cache_key(changed.key_fields()) != base, name


def _corrupt_garbage(path):
    path.write_bytes(b"not a torch file")


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path, edit):
    entry = torch.load(path, weights_only=True)
    edit(entry)
    torch.save(entry, path)


CORRUPTIONS = {
    "garbage": _corrupt_garbage,
    "truncated": _corrupt_truncate,
    "nan": lambda p: _rewrite(p, lambda e: e["tensors"]["q"].view(-1).__setitem__(0, float("nan"))),
    "shape": lambda p: _rewrite(p, lambda e: e["tensors"].__setitem__("k", e["tensors"]["k"][..., :2])),
    "dtype": lambda p: _rewrite(p, lambda e: e["tensors"].__setitem__("q", e["tensors"]["q"].double())),
    "key": lambda p: _rewrite(p, lambda e: e.__setitem__("key", "0" * 64)),
    "not-a-dict": lambda p: torch.save([1, 2, 3], p),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_entry_is_refitted_never_trusted(tmp_path, kind, caplog):
    good = fit_impulse(**SMALL, cache_dir=tmp_path)
    (name,) = _entries(tmp_path)
    CORRUPTIONS[kind](tmp_path / name)
    with caplog.at_level(logging.WARNING):
        again = fit_impulse(**SMALL, cache_dir=tmp_path)
    assert again.report.extra["cache"].startswith("corrupt")
    assert "refitting" in caplog.text
    assert torch.equal(again.q, good.q) and torch.equal(again.k, good.k)
    third = fit_impulse(**SMALL, cache_dir=tmp_path)  # the refit replaced the bad entry
    assert third.report.extra["cache"] == "hit"


def test_failed_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.torch, "save", half_save)
    res = fit_impulse(**SMALL, cache_dir=tmp_path)  # the fit itself succeeds
    assert res.report.extra["cache"] == "miss"
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(cache_mod.torch, "save", real_save)
    assert fit_impulse(**SMALL, cache_dir=tmp_path).report.extra["cache"] == "miss"
    assert len(_entries(tmp_path)) == 1


def test_unwritable_cache_dir_costs_the_cache_not_the_fit(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    res = fit_impulse(**SMALL, cache_dir=blocker / "cache")
    assert res.report.extra["cache"] == "miss" and res.q.shape == (1, 3, 32, 8)


def test_cache_arguments_are_checked():
    with pytest.raises(TypeError, match="cache_dir"):
        fit_impulse(**SMALL, cache_dir=3)
    with pytest.raises(TypeError, match="dedup"):
        fit_impulse(**SMALL, dedup="yes")
    with pytest.raises(ValueError, match="tol"):
        fit_impulse(**SMALL, tol=-1.0)
    with pytest.raises(ValueError, match="check_every"):
        fit_impulse(**SMALL, tol=0.1, check_every=0)
    with pytest.raises(ValueError, match="iterative"):
        fit_impulse(**dict(SMALL, fit_method="closed_form"), dedup=True)


def test_key_is_exact_and_canonical():
    base = dict(a=0.1, b=[1, 2], t=torch.arange(4.0))
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))
    assert cache_key(base) != cache_key(dict(base, a=0.10000000000000002))  # the next float after 0.1
    t2 = torch.arange(4.0)
    t2[3] = 3.0000002
    assert cache_key(base) != cache_key(dict(base, t=t2))
    assert tensor_digest(torch.zeros(2, 3)) != tensor_digest(torch.zeros(3, 2))
    assert tensor_digest(torch.zeros(3)) != tensor_digest(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError):
        cache_key(dict(f=object()))


def test_cache_load_reports_miss_for_absent_entry(tmp_path):
    entry, status = FitCache(tmp_path).load("0" * 64, {"q": ((1,), torch.float32)})
    assert entry is None and status == "miss"


# ---------------------------------------------------------------------------------------------------------------
# the fast (non-faithful) fit


def _layer_targets():
    # Two layers on a 4x5 grid; heads 0 and 2 of layer 0 and head 1 of layer 1 share offset (1, 0).
    offs = torch.tensor([[[1, 0], [0, 1], [1, 0]], [[-1, -1], [1, 0], [0, 0]]])
    return offs, torch.stack([impulse_targets(o, (4, 5)) for o in offs])


def test_representatives_are_first_occurrences_in_layer_major_order():
    _, t = _layer_targets()
    reps, which = representatives(t)
    assert reps.tolist() == [0, 1, 3, 5]
    assert which.tolist() == [0, 1, 0, 2, 0, 3]


def test_dedup_gives_every_copy_the_faithful_fit_of_its_first_head():
    offs, t = _layer_targets()
    x = sincos_2d((4, 5), 32)
    q0, k0 = init_qk(2, 3, 32, 8, torch.Generator().manual_seed(3))
    kw = dict(steps=25, lr=1e-3, scale=0.5, renorm_every=7, renorm="code")
    # The faithful fit, computed the same way (the reduced-basis twin, float32; it equals the autograd
    # reference up to rounding, tests/test_fit_ext.py).
    q_ref, k_ref = fit_iterative_factored(x, t, 8, q0=q0, k0=k0, **kw)
    q, k, info = fit_iterative_fast(x, t, 8, q0=q0, k0=k0, dedup=True, backend="reference", **kw)
    assert info.distinct_heads == 4 and info.total_heads == 6
    assert "not the published recipe" in info.as_dict()["algorithm"]
    for layer, head, rep in [(0, 0, (0, 0)), (0, 2, (0, 0)), (1, 1, (0, 0)), (0, 1, (0, 1)), (1, 2, (1, 2))]:
        torch.testing.assert_close(q[layer, head], q_ref[rep], rtol=0, atol=1e-6)
        torch.testing.assert_close(k[layer, head], k_ref[rep], rtol=0, atol=1e-6)
    assert torch.equal(q[0, 0], q[0, 2]) and torch.equal(q[0, 0], q[1, 1])


def test_early_stop_keeps_the_faithful_iterates_up_to_the_stop():
    _, t = _layer_targets()
    x = sincos_2d((4, 5), 32)
    q0, k0 = init_qk(2, 3, 32, 8, torch.Generator().manual_seed(4))
    kw = dict(lr=1e-3, scale=0.5, renorm_every=7, renorm="code")
    # A tolerance no head can meet stops every head at the second check (step 20).
    q, k, info = fit_iterative_fast(x, t, 8, q0=q0, k0=k0, steps=60, dedup=False, tol=1e9, check_every=10,
                                    backend="reference", **kw)
    assert info.steps_run.unique().tolist() == [20] and info.as_dict()["stopped_early"] == 6
    q20, k20 = fit_iterative_factored(x, t, 8, q0=q0, k0=k0, steps=20, **kw)
    torch.testing.assert_close(q, q20, rtol=0, atol=1e-6)
    torch.testing.assert_close(k, k20, rtol=0, atol=1e-6)


def test_fast_fit_on_the_kernels_is_bitwise_the_faithful_kernel_fit():
    from impulse_attn.fitting import compiled as fit_ext
    if not fit_ext.available("cpu")[0]:
        pytest.skip("compiled extension not available")
    _, t = _layer_targets()
    x = sincos_2d((4, 5), 32)
    q0, k0 = init_qk(2, 3, 32, 8, torch.Generator().manual_seed(5))
    kw = dict(steps=30, lr=1e-3, scale=0.5, renorm_every=7, renorm="code")
    q_full, k_full = fit_ext.fit_iterative(x, t, 8, q0=q0, k0=k0, **kw)
    q, k, _ = fit_iterative_fast(x, t, 8, q0=q0, k0=k0, dedup=True, tol=None, backend="cpp", **kw)
    # Heads never interact, so the deduplicated batch computes each representative exactly as the full batch.
    assert torch.equal(q[0, 0], q_full[0, 0]) and torch.equal(q[1, 1], q_full[0, 0])
    assert torch.equal(k[1, 2], k_full[1, 2])


def test_fit_impulse_labels_the_fast_fit():
    res = fit_impulse(**dict(SMALL, num_heads=6), dedup=True, offsets=[[0, 1]] * 3 + [[1, 0]] * 3)
    extra = res.report.extra
    assert "not the published recipe" in extra["algorithm"]
    assert extra["distinct_heads"] == 2 and extra["total_heads"] == 6
    assert torch.equal(res.q[0, 0], res.q[0, 2]) and not torch.equal(res.q[0, 0], res.q[0, 3])
