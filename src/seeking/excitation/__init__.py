"""Excitation (arXiv 2602.21798): an optimizer wrapper that scales each expert's step by its utilization."""

from .optimizer import Excitation
from .strategies import Strategy, get_strategy, list_strategies, register_strategy

__all__ = ["Excitation", "Strategy", "get_strategy", "list_strategies", "register_strategy"]
