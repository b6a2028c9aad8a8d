"""The ready trainer: configuration, loop, evaluation, FLOPs, comparison of arms."""

from ..flops import train_step_flops
from .config import TrainConfig
from .evaluate import evaluate
from .loop import RunResult, train

__all__ = ["RunResult", "TrainConfig", "evaluate", "train", "train_step_flops"]
