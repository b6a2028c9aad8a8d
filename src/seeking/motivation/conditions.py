"""Motivation conditions: small stateful objects that decide, from the training loss, whether the
next batch trains the motivated (large) model.

Protocol: ``condition.motivated`` says which model the *next* batch trains; ``condition.update(loss)``
is called with the loss of the model that just stepped. ``state_dict`` / ``load_state_dict`` hold
plain Python values, so a condition survives checkpoints exactly.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ..errors import ConfigError


class Condition:
    """Base class. Subclasses set ``self.motivated`` in :meth:`update`."""

    name = "condition"

    def __init__(self) -> None:
        self.motivated = False

    def update(self, loss: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"motivated": self.motivated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.motivated = bool(state["motivated"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ConsecutiveDecrease(Condition):
    """The default rule (METHODS.md section 1): enter the motivated state after ``k`` strict
    decreases of the loss in a row; stay while each new loss is lower than the previous one; the
    first loss that does not decrease ends the episode and the count starts again from zero.

    Non-finite losses never enter the history: they end an episode and reset the count.
    """

    name = "decrease"

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"the motivation condition needs k >= 1 consecutive decreases, got {k!r}")
        self.k = k
        self.previous: float | None = None
        self.decreases = 0

    def update(self, loss: float) -> None:
        loss = float(loss)
        if not math.isfinite(loss):
            self.previous, self.decreases, self.motivated = None, 0, False
            return
        decreased = self.previous is not None and loss < self.previous
        self.previous = loss
        if self.motivated:
            self.motivated = decreased
            self.decreases = 0
            return
        self.decreases = self.decreases + 1 if decreased else 0
        self.motivated = self.decreases >= self.k

    def state_dict(self) -> dict[str, Any]:
        return {"motivated": self.motivated, "previous": self.previous, "decreases": self.decreases, "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("k", self.k) != self.k:
            raise ConfigError(f"condition state was saved with k={state['k']}, this condition has k={self.k}")
        super().load_state_dict(state)
        self.previous = state["previous"]
        self.decreases = int(state["decreases"])

    def __repr__(self) -> str:
        return f"ConsecutiveDecrease(k={self.k})"


class Never(Condition):
    """Classical training of the base model: the motivated model never steps."""

    name = "never"

    def update(self, loss: float) -> None:
        pass


class Always(Condition):
    """Classical training of the large model alone."""

    name = "always"

    def __init__(self) -> None:
        super().__init__()
        self.motivated = True

    def update(self, loss: float) -> None:
        pass


class RandomRate(Condition):
    """The control: each batch independently trains the motivated model with probability ``p``,
    ignoring the loss. Run it at the p a loss-driven run measured to see what the loss signal adds.
    """

    name = "random"

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"the random condition's rate p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = random.Random(seed)
        self.motivated = self.rng.random() < self.p

    def update(self, loss: float) -> None:
        self.motivated = self.rng.random() < self.p

    def state_dict(self) -> dict[str, Any]:
        return {"motivated": self.motivated, "p": self.p, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.p = float(state["p"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def __repr__(self) -> str:
        return f"RandomRate(p={self.p})"


def make_condition(name: str, *, k: int = 2, p: float = 0.2, seed: int = 0) -> Condition:
    """Build a condition from its command-line name: decrease, never, always or random."""
    if name == "decrease":
        return ConsecutiveDecrease(k)
    if name == "never":
        return Never()
    if name == "always":
        return Always()
    if name == "random":
        return RandomRate(p, seed)
    raise ConfigError(f"unknown condition {name!r}; choose one of: decrease, never, always, random")
