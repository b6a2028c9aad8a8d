"""Excitation strategies: utilization of a layer's experts -> the factor Phi that scales each expert's step.

A strategy is a function ``(u, gamma, generator) -> Phi``. ``u`` has shape ``(E,)``: the fraction of the
layer's routed token assignments that went to each expert in the last step (it sums to 1). ``Phi`` has the
same shape and device. Strategies are looked up by name with :func:`get_strategy`.

Every strategy except Positive-Sum and Global returns factors with mean 1 over the layer's experts, so
Excitation redistributes the base optimizer's step among the experts rather than growing it. They are
computed as ``E * softmax(logits)``, which is exact in the limits (an unused expert has logit ``-inf`` and
factor 0) and cannot overflow for large ``gamma`` or many experts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError

Strategy = Callable[[Tensor, float, torch.Generator], Tensor]

_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator that registers a strategy under ``name``."""

    def register(fn: Strategy) -> Strategy:
        if name in _STRATEGIES:
            raise ValueError(f"Excitation strategy {name!r} is registered twice")
        _STRATEGIES[name] = fn
        return fn

    return register


def list_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy`, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        known = ", ".join(list_strategies())
        raise ConfigError(f"unknown Excitation strategy {name!r}; known strategies: {known}") from None


def _mean_one(logits: Tensor) -> Tensor:
    """Factors proportional to ``exp(logits)`` with mean 1."""
    return logits.softmax(0) * logits.numel()


@register_strategy("zero_sum")
def zero_sum(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """The paper's Zero-Sum: ``Phi_k = u_k^gamma / mean_j(u_j^gamma)``; an unused expert does not move."""
    return _mean_one(gamma * u.log())


@register_strategy("positive_sum")
def positive_sum(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """The paper's Positive-Sum: ``Phi_k = max(1, ZeroSum_k)``; no expert moves less than the base step."""
    return zero_sum(u, gamma, generator).clamp(min=1.0)


@register_strategy("exp_diff")
def exp_diff(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """Exponential-Diff (this project's formula; the paper gives none):
    ``Phi_k ∝ u_k^gamma * exp(gamma * (r_k - 1))`` with relative load ``r_k = u_k / mean_j(u_j)``, mean 1.

    It is Zero-Sum times an exponential of the load difference, so for any two experts the ratio of the
    less-used one's factor to the more-used one's is smaller than under Zero-Sum with the same gamma:
    inactive experts are suppressed more aggressively, and an unused expert does not move.
    """
    return _mean_one(gamma * (u.log() + u * u.numel()))


@register_strategy("inverted")
def inverted(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """Control that favours rarely used experts (this project's formula):
    ``Phi_k ∝ u_k^-gamma`` over the used experts, mean 1 over all; an unused expert keeps factor 0 (it
    had no token from this batch). For two used experts it swaps Zero-Sum's factors.
    """
    return _mean_one(torch.where(u > 0, -gamma * u.log(), -torch.inf))


@register_strategy("random")
def random_permutation(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """Control: Zero-Sum's factors randomly permuted across the layer's experts (``generator`` is CPU)."""
    permutation = torch.randperm(u.numel(), generator=generator).to(u.device, non_blocking=True)
    return zero_sum(u, gamma, generator)[permutation]


@register_strategy("global")
def uniform(u: Tensor, gamma: float, generator: torch.Generator) -> Tensor:
    """Control: every factor is 1, so the wrapper steps exactly as the base optimizer."""
    return torch.ones_like(u)
