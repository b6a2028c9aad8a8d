"""Motivation training: a base model trains every batch; a larger model containing it trains
only while the loss keeps falling; a weights map keeps their common weights in sync."""

from .conditions import Always, Condition, ConsecutiveDecrease, Never, RandomRate, make_condition
from .motivator import BATCHNORM_POLICIES, OPTIMIZER_STATE_POLICIES, SYNC_MODES, Motivator
from .weights_map import MapEntry, WeightMap

__all__ = [
    "BATCHNORM_POLICIES",
    "OPTIMIZER_STATE_POLICIES",
    "SYNC_MODES",
    "Always",
    "Condition",
    "ConsecutiveDecrease",
    "MapEntry",
    "Motivator",
    "Never",
    "RandomRate",
    "WeightMap",
    "make_condition",
]
