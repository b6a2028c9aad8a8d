"""The closed sets of the trainers' optimizers and learning-rate schedules, each a registry.

A new optimizer is one :func:`register_optimizer` call, a new schedule one :func:`register_schedule`;
the configuration's choices and the command line's ``--optimizer`` / ``--schedule`` follow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import unknown_choice

OptimizerBuilder = Callable[..., torch.optim.Optimizer]
Schedule = Callable[[int, int, int], float]


@dataclass(frozen=True)
class OptimizerEntry:
    """``build(params, *, lr, weight_decay)``, plus ``momentum=`` when ``momentum`` is true."""

    build: OptimizerBuilder
    momentum: bool


OPTIMIZERS: dict[str, OptimizerEntry] = {}
SCHEDULES: dict[str, Schedule] = {}


def register_optimizer(
    name: str, *, momentum: bool, build: OptimizerBuilder | None = None
) -> Callable[[OptimizerBuilder], OptimizerBuilder] | OptimizerBuilder:
    """Register ``build`` (an optimizer class or a function with its keywords) under ``name``;
    ``momentum``: whether it takes ``momentum=``. Without ``build``, a decorator."""

    def register(fn: OptimizerBuilder) -> OptimizerBuilder:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} is registered twice")
        OPTIMIZERS[name] = OptimizerEntry(fn, momentum)
        return fn

    return register if build is None else register(build)


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Decorator that registers ``schedule(step, total, warmup) -> factor`` under ``name``."""

    def register(fn: Schedule) -> Schedule:
        if name in SCHEDULES:
            raise ValueError(f"schedule {name!r} is registered twice")
        SCHEDULES[name] = fn
        return fn

    return register


def _entry(kind: str, registry: dict[str, Any], name: str) -> Any:
    if name not in registry:
        raise unknown_choice(kind, name, registry)
    return registry[name]


def build_optimizer(
    name: str, params: Iterable[Any], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` over ``params``; ``momentum`` goes only to those that take
    it (for the others it is ignored). An unknown name is a ``ConfigError`` listing the choices."""
    entry: OptimizerEntry = _entry("optimizer", OPTIMIZERS, name)
    extra = {"momentum": momentum} if entry.momentum else {}
    return entry.build(params, lr=lr, weight_decay=weight_decay, **extra)


def with_momentum() -> list[str]:
    """The registered optimizers that take ``momentum``, in registration order."""
    return [name for name, entry in OPTIMIZERS.items() if entry.momentum]


register_optimizer("sgd", momentum=True, build=torch.optim.SGD)


@register_optimizer("nesterov", momentum=True)
def _nesterov(params: Any, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, plain SGD at momentum 0 (PyTorch refuses Nesterov without momentum)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


register_optimizer("adam", momentum=False, build=torch.optim.Adam)
register_optimizer("adamw", momentum=False, build=torch.optim.AdamW)
register_optimizer("rmsprop", momentum=True, build=torch.optim.RMSprop)
register_optimizer("adagrad", momentum=False, build=torch.optim.Adagrad)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps, for the schedule
    registered as ``schedule`` with ``warmup`` warmup steps (both models follow one clock). An unknown
    name is a ``ConfigError`` listing the choices."""
    return _entry("schedule", SCHEDULES, schedule)(step, total, warmup)


def _cosine_decay(step: int, total: int, warmup: int) -> float:
    """From 1 after ``warmup`` steps to 0 at ``total``, along half a cosine (SGDR, Loshchilov & Hutter 2017)."""
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@register_schedule("cosine")
def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0."""
    return (step + 1) / warmup if step < warmup else _cosine_decay(step, total, warmup)


@register_schedule("onecycle")
def onecycle(step: int, total: int, warmup: int) -> float:
    """Warmup over 30% of the run from 1/25 of the peak (``warmup`` is not used), then cosine decay to 0."""
    warmup = max(1, int(0.3 * total))
    return 0.04 + 0.96 * step / warmup if step < warmup else _cosine_decay(step, total, warmup)


@register_schedule("constant")
def constant(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then 1."""
    return (step + 1) / warmup if step < warmup else 1.0
