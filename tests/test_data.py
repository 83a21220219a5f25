"""Datasets: image folders, --per-class subsets, torchvision datasets without the network, the built-in one."""
from __future__ import annotations

import urllib.error
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from impulse_attn.training import TrainConfig, UserError, build_datasets, per_class_indices
from impulse_attn.training import data as data_mod
from impulse_attn.training.synthetic import SHAPES, SyntheticShapes, synthetic_shapes

from conftest import image_tree


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


# --- image folders --------------------------------------------------------------------------------------------
def test_image_folder_loads_and_resizes(tmp_path):
    image_tree(tmp_path, "train", ["cat", "dog", "emu"], 5, size=12)
    image_tree(tmp_path, "test", ["cat", "dog", "emu"], 2, size=12)
    d = build_datasets(_cfg(dataset="folder", data_dir=str(tmp_path), image_size=8))
    assert d.classes == ["cat", "dog", "emu"] and d.num_classes == 3
    assert (len(d.train), len(d.test), d.image_size) == (15, 6, 8)
    x, y = d.train[7]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 1
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0       # normalized with mean 0.5, std 0.5


def test_image_folder_native_size_and_val_split(tmp_path):
    image_tree(tmp_path, "train", ["a", "b"], 3, size=10)
    image_tree(tmp_path, "val", ["a", "b"], 1, size=10)
    d = build_datasets(_cfg(dataset="folder", data_dir=str(tmp_path)))
    assert d.image_size == 10 and len(d.test) == 2 and d.test[0][0].shape == (3, 10, 10)


def test_image_folder_with_val_and_test_evaluates_both_val_first(tmp_path):
    image_tree(tmp_path, "train", ["a", "b"], 3, size=10)
    image_tree(tmp_path, "val", ["a", "b"], 2, size=10)
    image_tree(tmp_path, "test", ["a", "b"], 1, size=10)
    d = build_datasets(_cfg(dataset="folder", data_dir=str(tmp_path)))
    assert list(d.evals) == ["val", "test"] and d.primary == "val"
    assert (len(d.evals["val"]), len(d.evals["test"]), len(d.test)) == (4, 2, 2)


def test_flip_crop_shifts_and_flips_but_keeps_pixels():
    img = torch.arange(3 * 16 * 16, dtype=torch.int64).reshape(3, 16, 16).remainder(251).to(torch.uint8) + 1
    tf = data_mod.build_transform(16, augment="flip-crop", resize=False)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(20)]
    plain = data_mod.build_transform(16, augment="none", resize=False)(img)
    assert all(o.shape == (3, 16, 16) for o in outs)
    assert any(not torch.equal(o, plain) for o in outs)
    # every output is the image shifted by at most 2 pixels (16/8), maybe mirrored, zero (-1 after normalizing)
    # where the shift leaves the image
    def shifted(o):
        for flip in (False, True):
            src = plain.flip(-1) if flip else plain
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    ref = torch.full_like(src, -1.0)
                    ys, yd = slice(max(dy, 0), 16 + min(dy, 0)), slice(max(-dy, 0), 16 + min(-dy, 0))
                    xs, xd = slice(max(dx, 0), 16 + min(dx, 0)), slice(max(-dx, 0), 16 + min(-dx, 0))
                    ref[:, yd, xd] = src[:, ys, xs]
                    if torch.equal(ref, o):
                        return True
        return False
    assert all(shifted(o) for o in outs)


def test_per_class_picks_exactly_n_per_class(tmp_path):
    image_tree(tmp_path, "train", ["a", "b", "c"], 6)
    image_tree(tmp_path, "test", ["a", "b", "c"], 1)
    d = build_datasets(_cfg(dataset="folder", data_dir=str(tmp_path), per_class=4))
    labels = [d.train[i][1] for i in range(len(d.train))]
    assert Counter(labels) == {0: 4, 1: 4, 2: 4}
    again = build_datasets(_cfg(dataset="folder", data_dir=str(tmp_path), per_class=4))
    assert d.train.indices == again.train.indices                  # deterministic


def test_per_class_indices_are_nested_and_seeded():
    targets = [i % 3 for i in range(60)]
    small, large = per_class_indices(targets, 5, seed=1), per_class_indices(targets, 12, seed=1)
    assert Counter(targets[i] for i in small) == {0: 5, 1: 5, 2: 5}
    assert set(small) <= set(large)                                # adding images, not redrawing them
    assert per_class_indices(targets, 5, seed=2) != small
    with pytest.raises(UserError, match="more images than class"):
        per_class_indices(targets, 21)


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("no_train", "no train/ folder"),
    ("no_test", "no test/ or val/ folder"),
    ("empty", "holds no images"),
    ("mismatch", "different class folders"),
])
def test_image_folder_errors_name_the_problem(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout in ("no_test", "mismatch"):
        image_tree(root, "train", ["a", "b"], 2)
    if layout == "no_train":
        image_tree(root, "test", ["a"], 1)
    if layout == "empty":
        (root / "train" / "a").mkdir(parents=True)
        (root / "test" / "a").mkdir(parents=True)
    if layout == "mismatch":
        image_tree(root, "test", ["a", "c"], 1)
    with pytest.raises(UserError, match=message) as e:
        build_datasets(_cfg(dataset="folder", data_dir=str(root)))
    assert "\n" not in str(e.value) and ":" in str(e.value)         # one line, with a fix after the colon


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'imagenet5'"):
        build_datasets(_cfg(dataset="imagenet5"))


# --- torchvision datasets, never downloaded in tests ----------------------------------------------------------
class _FakeTorchvision:
    calls: list = []

    def __init__(self, root, train=None, split=None, download=False, transform=None):
        type(self).calls.append(dict(root=root, train=train, split=split, download=download))
        n = 20 if (train or split == "train") else 10
        self.targets = [i % 10 for i in range(n)]
        self.classes = [f"class{i}" for i in range(10)]
        self.transform = transform

    def _labels(self):
        return self.targets

    def __len__(self):
        return len(self._labels())

    def __getitem__(self, i):
        img = Image.new("RGB", (32, 32), (i * 10 % 255, 0, 0))
        return self.transform(img), self._labels()[i]


class _FakeSVHN(_FakeTorchvision):
    """SVHN has ``labels`` (a numpy array) and no ``targets`` or ``classes``."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        import numpy as np
        self.labels = np.array(self.targets)
        del self.targets, self.classes

    def _labels(self):
        return self.labels


@pytest.mark.parametrize("name, attr", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("svhn", "SVHN")])
def test_torchvision_datasets_without_network(tmp_path, monkeypatch, name, attr):
    import torchvision.datasets as tvd
    fake = type(attr, (_FakeSVHN if name == "svhn" else _FakeTorchvision,), {"calls": []})
    monkeypatch.setattr(tvd, attr, fake)
    if name == "svhn":  # SVHN is refused up front without scipy, which torchvision's real loader reads it with
        import sys
        import types
        monkeypatch.setitem(sys.modules, "scipy", sys.modules.get("scipy") or types.ModuleType("scipy"))
        monkeypatch.setitem(sys.modules, "scipy.io", sys.modules.get("scipy.io") or types.ModuleType("scipy.io"))
    d = build_datasets(_cfg(dataset=name, data_dir=str(tmp_path / "dl"), per_class=1))
    assert len(d.train) == 10 and len(d.test) == 10 and d.num_classes == 10
    assert d.train[0][0].shape == (3, 32, 32)
    assert all(c["download"] and c["root"] == str(tmp_path / "dl") for c in fake.calls)
    if name == "svhn":
        assert [c["split"] for c in fake.calls] == ["train", "test"]
    else:
        assert [c["train"] for c in fake.calls] == [True, False]


def test_torchvision_download_failure_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **kw):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(UserError, match="could not load cifar10") as e:
        build_datasets(_cfg(dataset="cifar10", data_dir=str(tmp_path)))
    assert "network" in str(e.value)


def test_torchvision_name_on_an_image_folder_tree_is_refused(tmp_path):
    image_tree(tmp_path, "train", ["a"], 1)
    with pytest.raises(UserError, match="--dataset folder"):
        build_datasets(_cfg(dataset="cifar10", data_dir=str(tmp_path)))


def test_augmentation_transform_on_tensors_and_pil():
    tf = data_mod.build_transform(16, augment="paper", resize=False)
    torch.manual_seed(0)
    x = tf(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    y = tf(Image.new("RGB", (16, 16), (10, 200, 30)))
    assert x.shape == y.shape == (3, 16, 16) and x.dtype == torch.float32


# --- the built-in dataset -------------------------------------------------------------------------------------
def test_synthetic_is_seeded_and_balanced():
    a, la = synthetic_shapes(200, 32, seed=3, split="train")
    b, lb = synthetic_shapes(200, 32, seed=3, split="train")
    c, _ = synthetic_shapes(200, 32, seed=3, split="test")
    assert a.dtype == torch.uint8 and a.shape == (200, 3, 32, 32)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert Counter(la.tolist()) == {k: 20 for k in range(10)}


def test_synthetic_images_hold_their_class_shape():
    imgs, labels = synthetic_shapes(50, 16, seed=0, copies=1)
    shapes = list(SHAPES.values())
    for img, label in zip(imgs, labels.tolist()):
        lit = (img != img[:, :1, :1]).any(0).nonzero()               # pixels that differ from the background
        lit = lit - lit.min(0).values
        want = torch.tensor(shapes[label])
        want = want - want.min(0).values
        assert sorted(map(tuple, lit.tolist())) == sorted(map(tuple, want.tolist()))


def test_synthetic_augment_is_refused():
    with pytest.raises(UserError, match="drop --augment"):
        build_datasets(_cfg(dataset="synthetic", augment="flip-crop"))


def test_synthetic_bundle():
    d = build_datasets(_cfg(dataset="synthetic", synthetic_train=50, synthetic_test=20, per_class=3))
    assert len(d.train) == 30 and len(d.test) == 20 and d.num_classes == 10 and d.image_size == 32
    assert isinstance(d.train.dataset, SyntheticShapes)
