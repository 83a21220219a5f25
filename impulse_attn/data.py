"""Datasets for training, under the name the command line's docs use; they live in ``impulse_attn.training``.

``build_datasets(TrainConfig)``: CIFAR-10/100 and SVHN through torchvision, image folders, the built-in
synthetic shapes, ``--per-class`` subsets and the paper's augmentation.
"""
from .training.data import DATASETS, DataBundle, build_datasets, build_transform, per_class_indices
from .training.synthetic import SHAPES, SyntheticShapes, synthetic_shapes

__all__ = ["DATASETS", "DataBundle", "build_datasets", "build_transform", "per_class_indices", "SHAPES",
           "SyntheticShapes", "synthetic_shapes"]
