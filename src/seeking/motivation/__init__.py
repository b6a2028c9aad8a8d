"""Motivation training: a base model trains every batch; a larger model containing it trains
only while the loss keeps falling; a weights map keeps their common weights in sync."""

from .adaptive import BudgetController, SmoothedTrend, StepValue, motivated_share, slope_t
from .chain import Chain, chain_roles, run_models
from .conditions import (
    CONDITIONS,
    ROLES,
    Always,
    Condition,
    ConsecutiveDecrease,
    Never,
    RandomPlacement,
    RandomRate,
    classical_condition,
    make_condition,
    register_condition,
)
from .identity import IDENTITY_RULES, make_identity, register_identity_rule
from .motivator import BATCHNORM_POLICIES, DEFAULT_SYNC, OPTIMIZER_STATE_POLICIES, SYNC_MODES, Motivator
from .plan import SingleModel, TrainingPlan
from .weights_map import MapEntry, WeightMap

__all__ = [
    "BATCHNORM_POLICIES",
    "CONDITIONS",
    "DEFAULT_SYNC",
    "IDENTITY_RULES",
    "OPTIMIZER_STATE_POLICIES",
    "ROLES",
    "SYNC_MODES",
    "Always",
    "BudgetController",
    "Chain",
    "Condition",
    "ConsecutiveDecrease",
    "MapEntry",
    "Motivator",
    "Never",
    "RandomPlacement",
    "RandomRate",
    "SingleModel",
    "SmoothedTrend",
    "StepValue",
    "TrainingPlan",
    "WeightMap",
    "chain_roles",
    "classical_condition",
    "make_condition",
    "make_identity",
    "motivated_share",
    "register_condition",
    "register_identity_rule",
    "run_models",
    "slope_t",
]
