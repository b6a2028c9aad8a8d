"""seeking: training-time conditional capacity for PyTorch.

Motivation training (arXiv 2602.21064): a base model trains every batch, a larger model that
contains it trains only while the loss keeps falling, and a weights map keeps their shared
weights in sync, so one run yields two deployable models.

Excitation (arXiv 2602.21798): an optimizer wrapper for Mixture-of-Experts that scales each
expert's update by its share of the batch's routed tokens.
"""

from .data import ImageData, ImageDataset, load_dataset
from .errors import CheckpointError, ConfigError, DataError, SeekingError
from .excitation import Excitation
from .model_file import load_model, save_model
from .models import create_model, list_models, register_model
from .motivation import (
    Always,
    Chain,
    Condition,
    ConsecutiveDecrease,
    MapEntry,
    Motivator,
    Never,
    RandomPlacement,
    RandomRate,
    WeightMap,
)
from .training import TrainConfig, evaluate, train, train_step_flops
from .version import __version__

__all__ = [
    "Always",
    "Chain",
    "CheckpointError",
    "Condition",
    "ConfigError",
    "ConsecutiveDecrease",
    "DataError",
    "Excitation",
    "ImageData",
    "ImageDataset",
    "MapEntry",
    "Motivator",
    "Never",
    "RandomPlacement",
    "RandomRate",
    "SeekingError",
    "TrainConfig",
    "WeightMap",
    "__version__",
    "create_model",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_model",
    "register_model",
    "save_model",
    "train",
    "train_step_flops",
]
