"""Excitation (arXiv 2602.21798): an optimizer wrapper that scales each expert's step by its utilization."""

from .fused import fused_types, register_fused
from .optimizer import Excitation
from .strategies import Strategy, get_strategy, list_strategies, register_strategy

__all__ = [
    "Excitation",
    "Strategy",
    "fused_types",
    "get_strategy",
    "list_strategies",
    "register_fused",
    "register_strategy",
]
