"""Motivation training: a base model trains every batch; a larger model containing it trains
only while the loss keeps falling; a weights map keeps their common weights in sync."""

from .conditions import (
    CONDITIONS,
    Always,
    Condition,
    ConsecutiveDecrease,
    Never,
    RandomPlacement,
    RandomRate,
    make_condition,
)
from .motivator import BATCHNORM_POLICIES, OPTIMIZER_STATE_POLICIES, SYNC_MODES, Motivator
from .weights_map import MapEntry, WeightMap

__all__ = [
    "BATCHNORM_POLICIES",
    "CONDITIONS",
    "OPTIMIZER_STATE_POLICIES",
    "SYNC_MODES",
    "Always",
    "Condition",
    "ConsecutiveDecrease",
    "MapEntry",
    "Motivator",
    "Never",
    "RandomPlacement",
    "RandomRate",
    "WeightMap",
    "make_condition",
]
