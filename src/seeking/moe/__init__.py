"""Mixture-of-Experts building blocks and the protocol that Excitation reads."""

from .protocol import ExpertLayer, expert_layers

__all__ = ["ExpertLayer", "expert_layers"]
