"""What a training loop needs from a plan: which model trains each step, and the counts it reports.

A loop asks the plan for the model and optimizer of the next step (:meth:`TrainingPlan.select`),
steps them, and tells the plan the step's loss (:meth:`TrainingPlan.observe`). :class:`Motivator`
is the plan of a Motivation run (two models), :class:`~seeking.motivation.chain.Chain` that of a
chain (N nested models); :class:`SingleModel` that of classical training (one).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError
from .conditions import ROLES


@runtime_checkable
class TrainingPlan(Protocol):
    """Decides which model trains on each batch; a checkpoint holds its :meth:`state_dict`."""

    active: str
    """The role (``"base"`` or ``"motivated"``) of the model :meth:`select` last returned: the one the step trains."""
    steps: int
    """Steps observed so far."""
    motivated_steps: int
    """Of which the motivated model's."""
    switches: int
    """Times the trained model changed from one step to the next."""

    @property
    def p(self) -> float:
        """The fraction of the steps so far that trained the motivated model (0 before any step)."""
        ...

    @property
    def steps_by_model(self) -> dict[str, int]:
        """Steps so far that trained each model of the plan, by role."""
        ...

    def select(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model that trains on the next batch and the optimizer that steps it; sets :attr:`active`."""
        ...

    def observe(self, loss: float) -> None:
        """Record that the model :meth:`select` returned stepped, with this (finite) training loss."""
        ...

    def finish(self) -> None:
        """Bring every model up to date with the last step, before they are tested or saved."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The plan's counters and decisions, as plain Python values (for a checkpoint)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output, so a resumed run makes the same decisions."""
        ...


class SingleModel:
    """Classical training of one model, the one of role ``role``: a :class:`TrainingPlan` whose
    :meth:`select` always returns that model and optimizer. Raises ``ConfigError`` for a role not
    in :data:`~seeking.motivation.conditions.ROLES`."""

    def __init__(self, role: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
        self.active, self.model, self.optimizer = role, model, optimizer
        self.steps = self.motivated_steps = self.switches = 0

    @property
    def p(self) -> float:
        """1 if the model is the motivated (large) one and it stepped, else 0."""
        return float(self.active == "motivated") if self.steps else 0.0

    @property
    def steps_by_model(self) -> dict[str, int]:
        """Every step trained the one model."""
        return {self.active: self.steps}

    def select(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The one model and its optimizer."""
        return self.model, self.optimizer

    def observe(self, loss: float) -> None:
        """Count the step (one model: the loss decides nothing)."""
        self.steps += 1
        self.motivated_steps += self.active == "motivated"

    def finish(self) -> None:
        """Nothing to do: there is no other model to bring up to date."""

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "motivated_steps": self.motivated_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.motivated_steps = int(state["steps"]), int(state["motivated_steps"])
