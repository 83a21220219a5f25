"""CIFAR-10, CIFAR-100 and SVHN through torchvision's own loaders, offline: each test writes tiny fakes in the
datasets' on-disk formats, and torchvision's integrity check passes on them because the test puts their MD5s in
the classes' known-file lists (monkeypatched; the check itself runs). Any download attempt fails the test. Also
the --augment timm recipe (timm's own create_transform) and the timm regularization settings on those data."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from impulse_attn.training import TrainConfig, UserError, build_datasets, train
from impulse_attn.training import data as data_mod

from conftest import single_thread

tvd = pytest.importorskip("torchvision.datasets")  # third-party; every module of ours is imported above


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The network is cut where torchvision's downloads reach it (files already present and verified never get
    there): a test that reaches it has failed the integrity check."""
    import urllib.request

    import torchvision.datasets.utils as tv_utils

    def refuse(*a, **kw):
        raise AssertionError("a test tried to download a dataset")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(tv_utils, "_urlretrieve", refuse)
    with single_thread():
        yield


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, label_of, seed: int) -> tuple:
    """n 32x32 RGB images (N, 32, 32, 3) uint8 whose red channel is 20·label everywhere (the label is readable
    from the pixels) plus noise in green/blue, and their labels."""
    rng = np.random.RandomState(seed)
    labels = [label_of(i) for i in range(n)]
    x = rng.randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)
    x[..., 0] = (20 * np.asarray(labels) % 256)[:, None, None]
    return x, labels


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar(root: Path, monkeypatch, hundred: bool, per_file: int = 4, classes: int = 4) -> dict:
    """torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) or cifar-100-python/
    (train, test, meta), with MD5s registered in the class's known-file lists."""
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = [f"class{c}" for c in range(classes)]
    written = {}
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    n_train = per_file * 5
    for i, name in enumerate(train_files + ["test" if hundred else "test_batch"]):
        n = n_train if hundred and name == "train" else per_file
        x, y = _images(n, lambda j: j % classes, seed=i)
        # CIFAR rows: 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major
        _write_pickle(folder / name, {"data": x.transpose(0, 3, 1, 2).reshape(n, 3072), label_key: y,
                                      "batch_label": name})
        written[name] = (x, y)
    meta = cls.meta["filename"]
    _write_pickle(folder / meta, {cls.meta["key"]: names})
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[t, _md5(folder / t)] for t in (["test"] if hundred else ["test_batch"])])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=_md5(folder / meta)))
    return written


def _expected(x_hwc: np.ndarray) -> torch.Tensor:
    """What the run's transform makes of a uint8 image: (3, S, S), (x / 255 − 0.5) / 0.5."""
    t = torch.from_numpy(x_hwc).permute(2, 0, 1).float() / 255
    return (t - 0.5) / 0.5


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_its_own_files_offline(tmp_path, monkeypatch, name):
    hundred = name == "cifar100"
    written = _fake_cifar(tmp_path, monkeypatch, hundred)
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    assert cls(str(tmp_path), train=True, download=False)._check_integrity()  # the real MD5 check passes
    d = build_datasets(TrainConfig(dataset=name, data_dir=str(tmp_path)))
    assert len(d.train) == 20 and len(d.test) == 4 and d.classes == [f"class{c}" for c in range(4)]
    assert d.image_size == 32 and d.primary == "test"
    first = "train" if hundred else "data_batch_1"
    x, y = written[first]
    img, label = d.train[1]
    assert label == y[1] and torch.allclose(img, _expected(x[1]), atol=1e-6)  # pixels where they were written
    tx, ty = written["test" if hundred else "test_batch"]
    img, label = d.test[3]
    assert label == ty[3] and torch.allclose(img, _expected(tx[3]), atol=1e-6)
    sub = build_datasets(TrainConfig(dataset=name, data_dir=str(tmp_path), per_class=2, image_size=16))
    assert len(sub.train) == 8 and sub.train[0][0].shape == (3, 16, 16)


def test_a_damaged_cifar_file_fails_the_integrity_check(tmp_path, monkeypatch):
    _fake_cifar(tmp_path, monkeypatch, hundred=False)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="could not load cifar10 .*tried to download"):
        build_datasets(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))


def _has_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _has_scipy(), reason="scipy is not installed: SVHN's .mat files cannot be written (or "
                                             "read by torchvision); test_svhn_without_scipy covers that case")
def test_svhn_from_its_own_files_offline(tmp_path, monkeypatch):
    import scipy.io
    split_list = dict(tvd.SVHN.split_list)
    written = {}
    for split, n in (("train", 12), ("test", 6)):
        x, y = _images(n, lambda j: j % 10, seed=len(split))
        mat_y = np.array([[10 if v == 0 else v] for v in y], dtype=np.uint8)   # SVHN stores digit 0 as 10
        fname = split_list[split][1]
        scipy.io.savemat(tmp_path / fname, {"X": x.transpose(1, 2, 3, 0), "y": mat_y})
        split_list[split] = [split_list[split][0], fname, _md5(tmp_path / fname)]
        written[split] = (x, y)
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    d = build_datasets(TrainConfig(dataset="svhn", data_dir=str(tmp_path)))
    assert len(d.train) == 12 and len(d.test) == 6 and d.num_classes == 10
    x, y = written["train"]
    img, label = d.train[10]
    assert label == 0 == y[10] and torch.allclose(img, _expected(x[10]), atol=1e-6)
    assert len(build_datasets(TrainConfig(dataset="svhn", data_dir=str(tmp_path), per_class=1)).train) == 10


@pytest.mark.skipif(_has_scipy(), reason="scipy is installed: test_svhn_from_its_own_files_offline runs instead")
def test_svhn_without_scipy_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="svhn needs scipy.*pip install scipy"):
        build_datasets(TrainConfig(dataset="svhn", data_dir=str(tmp_path)))


# --- augmentation recipes -------------------------------------------------------------------------------------
def test_timm_recipe_is_timms_own_transform():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    tf = data_mod.build_transform(32, "timm", resize=False, crop_scale=0.5, auto_augment="rand-m5-n3", reprob=0.4)
    parts = list(tf.transforms[1].transforms)
    kinds = [type(t) for t in parts]
    assert RandomResizedCropAndInterpolation in kinds and RandAugment in kinds and RandomErasing in kinds
    crop = next(t for t in parts if isinstance(t, RandomResizedCropAndInterpolation))
    assert tuple(crop.scale) == (0.5, 1.0)
    ra = next(t for t in parts if isinstance(t, RandAugment))
    assert ra.num_layers == 3 and all(op.magnitude == 5 for op in ra.ops)
    assert next(t for t in parts if isinstance(t, RandomErasing)).probability == 0.4
    torch.manual_seed(0)
    x = tf(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    y = tf(Image.new("RGB", (32, 32), (10, 200, 30)))
    assert x.shape == y.shape == (3, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize("augment", ["flip-crop", "paper", "timm"])
def test_every_recipe_on_fake_cifar(tmp_path, monkeypatch, augment):
    _fake_cifar(tmp_path, monkeypatch, hundred=False)
    d = build_datasets(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), augment=augment, image_size=16))
    img, _ = d.train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32
    assert torch.equal(d.test[0][0], d.test[0][0])                       # evaluation images are not augmented


def test_bad_auto_augment_policy_is_refused_before_any_work():
    with pytest.raises(UserError, match="--auto-augment 'bogus' is not a timm auto-augment policy"):
        TrainConfig(dataset="cifar10", augment="timm", auto_augment="bogus").check()
    TrainConfig(dataset="cifar10", augment="timm", auto_augment="augmix-m5-w3").check()


def test_training_on_fake_cifar_with_timms_recipe_mixup_and_ema(tmp_path, monkeypatch):
    _fake_cifar(tmp_path / "data", monkeypatch, hundred=False)
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "data"), augment="timm", mixup=0.8, cutmix=1.0,
                      smoothing=0.1, model_ema=True, model_ema_decay=0.5, image_size=16, patch_size=2, dim=32,
                      depth=1, num_heads=4, head_dim=8, mlp_dim=64, kernel_size=3, epochs=2, batch_size=8, lr=3e-3,
                      progress=False, out=str(tmp_path / "run"))
    res = train(cfg, log=lambda s: None)
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    assert [r["step"] for r in res.history] == [0, 2, 4]                # 20 images, batches of 8: the last 4 dropped
    assert all(np.isfinite(r["train_loss"]) for r in res.history[1:])
