"""Datasets for training: torchvision's CIFAR-10/100 and SVHN, any image-folder tree, and the built-in one.

``build_datasets(config)`` returns the train and test sets with the transforms of the run, after checking
everything a user can get wrong (unknown name, missing or empty folders, mismatched class lists, too few
images for ``--per-class``) and turning it into a one-line ``UserError``.

Image folders: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``val/``): how Tiny-ImageNet (after
sorting its val images into class folders) and a user's own data come in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset

from .errors import UserError
from .synthetic import SyntheticShapes

TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN"}
DATASETS = ("synthetic", "folder") + tuple(TORCHVISION)
NATIVE_SIZE = {"synthetic": 32, "cifar10": 32, "cifar100": 32, "svhn": 32}
# One normalization for every dataset keeps the runs comparable; the models normalize patches themselves.
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class DataBundle:
    """The training set and the evaluation sets, by split name ("val", "test"), in evaluation order.

    ``primary`` is the split that settings are chosen on: "val" when the data has one, else "test".
    """
    train: Dataset
    evals: Dict[str, Dataset]
    classes: List[str]
    image_size: int
    channels: int
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def primary(self) -> str:
        return "val" if "val" in self.evals else next(iter(self.evals))

    @property
    def test(self) -> Dataset:
        return self.evals.get("test", self.evals[self.primary])


def _to_uint8_tensor(img) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img
    from torchvision.transforms.functional import pil_to_tensor
    return pil_to_tensor(img.convert("RGB"))


def _to_rgb_pil(img):
    if isinstance(img, torch.Tensor):
        from torchvision.transforms.functional import to_pil_image
        return to_pil_image(img)
    return img.convert("RGB")


AUGMENTATIONS = ("none", "flip-crop", "paper", "timm")
TIMM_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"


def check_auto_augment(policy: str) -> None:
    """Refuse a policy string timm's auto-augment parser does not take, before any work."""
    try:
        from timm.data import create_transform
    except ImportError:
        raise UserError("--augment timm needs the timm package", "pip install 'timm>=1.0'") from None
    try:
        create_transform(32, is_training=True, auto_augment=policy)
    except Exception as e:  # noqa: BLE001 - timm raises assorted errors for a bad policy string
        raise UserError(f"--auto-augment {policy!r} is not a timm auto-augment policy ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]})",
                        f"use e.g. {TIMM_AUTO_AUGMENT}, rand-m7-mstd0.5, augmix-m5-w3 or original") from None


def timm_train_transform(image_size: int, crop_scale: float = 0.75, auto_augment: str = TIMM_AUTO_AUGMENT,
                         reprob: float = 0.25) -> Callable:
    """timm's own training transform (``timm.data.create_transform(is_training=True)``): RandomResizedCrop to
    ``image_size`` (area ``crop_scale``..1), horizontal flip, ``auto_augment``, ToTensor, normalization with
    this package's mean/std, RandomErasing (``reprob``, per-pixel noise), on a PIL image (tensors are converted)."""
    from timm.data import create_transform
    from torchvision import transforms as T
    tf = create_transform(image_size, is_training=True, scale=(crop_scale, 1.0), auto_augment=auto_augment,
                          re_prob=reprob, re_mode="pixel", re_count=1, mean=MEAN, std=STD)
    return T.Compose([T.Lambda(_to_rgb_pil), tf])


def build_transform(image_size: int, augment: str, resize: bool, crop_scale: float = 0.75,
                    auto_augment: str = TIMM_AUTO_AUGMENT, reprob: float = 0.25) -> Callable:
    """uint8 tensor or PIL image -> float (3, S, S) normalized, with one of ``AUGMENTATIONS`` on uint8 images:

    "none"; "flip-crop": the standard CIFAR recipe, a random crop from the image zero-padded by S/8 pixels (4 at
    32×32) and a horizontal flip; "paper": the paper's RandomResizedCrop (area ``crop_scale``..1), horizontal
    flip and RandAugment(2, 14); "timm": ``timm_train_transform`` (timm's create_transform with ``auto_augment``
    and random erasing ``reprob``).
    """
    from torchvision import transforms as T
    if isinstance(augment, bool):
        augment = "paper" if augment else "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if augment == "timm":
        return timm_train_transform(image_size, crop_scale, auto_augment, reprob)
    steps: list = [T.Lambda(_to_uint8_tensor)]
    if resize:
        steps.append(T.Resize((image_size, image_size), antialias=True))
    if augment == "flip-crop":
        steps += [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
    elif augment == "paper":
        steps += [T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), ratio=(1.0, 1.0), antialias=True),
                  T.RandomHorizontalFlip(), T.RandAugment(num_ops=2, magnitude=14)]
    steps += [T.ConvertImageDtype(torch.float32), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


#: Training images the init reads (a standard ViT's position calibration, the prior-on-data figures at step 0)
INIT_IMAGES = 256


def init_images(data: "DataBundle", seed: int, count: int = INIT_IMAGES) -> torch.Tensor:
    """``count`` training images spread evenly over the training set (which is ordered by class: every class is
    represented; all of it when it holds fewer), through the run's training transform with every random stream it
    could use seeded from ``seed`` and restored afterwards: the same batch for the same run, whatever ran before,
    and the run's own streams untouched."""
    import random

    import numpy as np
    ds = data.train
    n = min(count, len(ds))
    picked = sorted({round(i * (len(ds) - 1) / max(n - 1, 1)) for i in range(n)})
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            return torch.stack([ds[i][0] for i in picked])
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def per_class_indices(targets: Sequence[int], n: int, seed: int = 0) -> List[int]:
    """Indices of exactly ``n`` items per class, the same for the same (targets, n, seed), sorted.

    The subset for a larger n contains the subset for a smaller one (a prefix of one fixed permutation per
    class), so data-efficiency curves add images instead of drawing new ones.
    """
    t = torch.as_tensor([int(x) for x in targets])
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(t), generator=gen)
    picked = []
    for c in torch.unique(t).tolist():
        idx = order[t[order] == c]
        if len(idx) < n:
            raise UserError(f"--per-class {n} asks for more images than class {c} has ({len(idx)})",
                            f"use --per-class {len(idx)} or fewer")
        picked.append(idx[:n])
    return sorted(torch.cat(picked).tolist())


def _targets(ds) -> list:
    for name in ("targets", "labels"):
        if hasattr(ds, name):
            return [int(x) for x in getattr(ds, name)]
    raise TypeError(f"{type(ds).__name__} exposes no targets")


def _folder(root: Path, transform, what: str):
    from torchvision.datasets import ImageFolder
    try:
        return ImageFolder(str(root), transform=transform)
    except FileNotFoundError as e:
        raise UserError(f"{what} {root} holds no images in class folders ({e})",
                        "put each class's images in its own subfolder, e.g. train/cat/0001.jpg") from None
    except OSError as e:    # e.g. a class folder that is a symbolic link to itself (too many levels of links)
        raise UserError(f"{what} {root} cannot be read: {e.strerror or e} ({e.filename})",
                        "replace the broken link or folder with a class folder of images") from None


# Formats whose end marker says whether the file is complete (a truncated JPEG or PNG opens fine and fails to
# decode only when a batch needs it, epochs into a run).
_END_MARKERS = {"JPEG": (b"\xff\xd9", 64), "PNG": (b"IEND", 64)}


def check_images(paths: Sequence[str], what: str) -> None:
    """A check of every image file before training: not empty, for JPEG/PNG the format's end marker near the end
    of the file, and decoded in full by PIL (a file whose header is fine but whose data is damaged, e.g. bytes
    zeroed inside a JPEG, fails here rather than epochs into a run). The first bad file is a UserError naming
    it."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm
    for path in tqdm(paths, desc=f"checking {what} images", disable=len(paths) < 20000, leave=False):
        why = None
        try:
            size = os.path.getsize(path)
            if size == 0:
                why = "the file is empty"
            else:
                with Image.open(path) as im:
                    fmt = im.format
                marker = _END_MARKERS.get(fmt)
                if marker is not None:
                    with open(path, "rb") as f:
                        f.seek(max(0, size - marker[1]))
                        if marker[0] not in f.read():
                            why = f"the {fmt} data is truncated (no end marker)"
                if why is None:
                    try:
                        with Image.open(path) as im:
                            im.load()
                    except UnidentifiedImageError:
                        raise
                    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise these for bad data
                        why = f"the {fmt} data cannot be decoded ({(str(e).splitlines() or [''])[0][:80]})"
        except UnidentifiedImageError:
            why = "not an image PIL can read"
        except OSError as e:
            why = f"unreadable ({e.strerror or e})"
        if why:
            raise UserError(f"{what} image {path}: {why}", "remove or replace the file, then run again")


def _first_image_size(ds) -> int:
    from PIL import Image
    with Image.open(ds.samples[0][0]) as im:
        w, h = im.size
    if w != h:
        raise UserError(f"images in the folder are {w}x{h}, not square", "pass --image-size to resize them")
    return w


def _folder_datasets(data_dir: str, image_size: Optional[int], augment: str, crop_scale: float,
                     recipe: Optional[dict] = None):
    root = Path(data_dir)
    fix = "pass --data-dir pointing at a folder with train/ and test/ (or val/) class folders"
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist", fix)
    if not (root / "train").is_dir():
        raise UserError(f"data directory {root} has no train/ folder", fix)
    eval_roots = [root / n for n in ("val", "test") if (root / n).is_dir()]
    if not eval_roots:
        raise UserError(f"data directory {root} has no test/ or val/ folder", fix)
    for eval_root in eval_roots:
        if (eval_root / "images").is_dir() and not any(p.is_dir() and p.name != "images"
                                                        for p in eval_root.iterdir()):
            raise UserError(f"{eval_root} holds a flat images/ folder (Tiny-ImageNet's val layout)",
                            "move each val image into a folder named after its class (val_annotations.txt lists "
                            "them)")
    train = _folder(root / "train", None, "training folder")
    if len(train.classes) < 2:
        raise UserError(f"training folder {root / 'train'} has {len(train.classes)} class folder "
                        f"({', '.join(train.classes)}); a classifier needs at least 2",
                        "put each class's images in its own subfolder of train/ (and of val/ or test/)")
    evals = {}
    for eval_root in eval_roots:
        ds = _folder(eval_root, None, f"{eval_root.name} folder")
        if train.classes != ds.classes:
            missing = sorted(set(train.classes) ^ set(ds.classes))
            raise UserError(f"train/ and {eval_root.name}/ have different class folders (differ in {missing[:5]})",
                            "give both the same class subfolders")
        evals[eval_root.name] = ds
    check_images([p for p, _ in train.samples], "training")
    for name, ds in evals.items():
        check_images([p for p, _ in ds.samples], name)
    size = image_size or _first_image_size(train)
    train.transform = build_transform(size, augment, resize=True, crop_scale=crop_scale, **(recipe or {}))
    for ds in evals.values():
        ds.transform = build_transform(size, "none", resize=True)
    return train, evals, train.classes, size, f"image folder {root}"


def _torchvision_datasets(name: str, data_dir: str, image_size: Optional[int], augment: str, crop_scale: float,
                          recipe: Optional[dict] = None):
    import torchvision.datasets as tvd
    root = Path(data_dir)
    if name == "svhn":
        try:
            import scipy.io  # noqa: F401  (torchvision reads SVHN's .mat files with it)
        except ImportError:
            raise UserError("--dataset svhn needs scipy (torchvision reads SVHN's .mat files with scipy.io)",
                            "pip install scipy") from None
    if (root / "train").is_dir() and not any(root.glob("cifar-*")) and not any(root.glob("*.mat")):
        raise UserError(f"--data-dir {root} holds an image-folder tree (train/), not {name} files",
                        "pass --dataset folder")
    size = image_size or NATIVE_SIZE[name]
    train_tf = build_transform(size, augment, resize=size != NATIVE_SIZE[name], crop_scale=crop_scale,
                               **(recipe or {}))
    test_tf = build_transform(size, "none", resize=size != NATIVE_SIZE[name])
    cls = getattr(tvd, TORCHVISION[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        if name == "svhn":
            train = cls(str(root), split="train", download=True, transform=train_tf)
            test = cls(str(root), split="test", download=True, transform=test_tf)
            classes = [str(i) for i in range(10)]
        else:
            train = cls(str(root), train=True, download=True, transform=train_tf)
            test = cls(str(root), train=False, download=True, transform=test_tf)
            classes = list(train.classes)
    except UserError:
        raise
    except Exception as e:  # no network, a half-downloaded archive, a read-only folder: all fixable by the user
        raise UserError(f"could not load {name} from {root} ({type(e).__name__}: {str(e).splitlines()[0]})",
                        f"connect to the network once so torchvision can download it there, or pass --data-dir "
                        f"to a folder that holds the torchvision {name} files") from None
    return train, {"test": test}, classes, size, f"{name} (torchvision, {root})"


def build_datasets(config) -> DataBundle:
    """Train and test datasets for a ``TrainConfig`` (dataset, data_dir, image_size, augment, per_class, ...)."""
    name = config.dataset
    crop_scale = config.crop_scale
    recipe = {"auto_augment": getattr(config, "auto_augment", TIMM_AUTO_AUGMENT),
              "reprob": getattr(config, "reprob", 0.25)}
    if name == "synthetic":
        if config.augment != "none":
            raise UserError("--augment would flip the synthetic images, whose classes include mirror-image shapes "
                            "(diag and anti, the two bar directions)", "drop --augment for --dataset synthetic")
        size = config.image_size or NATIVE_SIZE["synthetic"]
        tf = build_transform(size, "none", resize=False)
        try:
            kw = dict(seed=config.data_seed, transform=tf, num_classes=config.synthetic_classes)
            train = SyntheticShapes(config.synthetic_train, size, split="train", **kw)
            test = SyntheticShapes(config.synthetic_test, size, split="test", **kw)
        except ValueError as e:
            raise UserError(f"synthetic dataset: {e}", "pass --image-size 5 or more") from None
        train_set, evals, classes = train, {"test": test}, train.classes
        desc = f"synthetic shapes ({config.synthetic_train} train / {config.synthetic_test} test, {size}x{size})"
    elif name == "folder":
        train_set, evals, classes, size, desc = _folder_datasets(config.data_dir, config.image_size,
                                                                   config.augment, crop_scale, recipe)
    elif name in TORCHVISION:
        train_set, evals, classes, size, desc = _torchvision_datasets(name, config.data_dir, config.image_size,
                                                                        config.augment, crop_scale, recipe)
    else:
        raise UserError(f"unknown dataset {name!r}", f"use one of {', '.join(DATASETS)} (folder: any directory "
                        f"with train/ and test/ class folders, via --data-dir)")
    if len(train_set) == 0 or any(len(ds) == 0 for ds in evals.values()):
        raise UserError(f"dataset {desc} is empty", "check --data-dir")
    if config.per_class is not None:
        train_set = Subset(train_set, per_class_indices(_targets(train_set), config.per_class, config.data_seed))
        desc += f", {config.per_class} per class"
    return DataBundle(train_set, evals, list(classes), size, 3, desc)
