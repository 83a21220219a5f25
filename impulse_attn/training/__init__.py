"""Training: one loop for every model, init and backend; datasets; checkpoints; metrics; comparisons."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import DATASETS, build_datasets, per_class_indices
from .errors import TrainingDiverged, UserError
from .factory import build_model
from .loop import TrainResult, load_history, train
from .synthetic import SHAPES, SyntheticShapes, synthetic_shapes

__all__ = ["TrainConfig", "train", "TrainResult", "load_history", "build_datasets", "build_model", "DATASETS",
           "per_class_indices", "SyntheticShapes", "synthetic_shapes", "SHAPES", "save_checkpoint", "load_checkpoint",
           "UserError", "TrainingDiverged"]
