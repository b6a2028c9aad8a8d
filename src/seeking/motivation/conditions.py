"""Motivation conditions: small stateful objects that decide, from the training loss, whether the
next batch trains the motivated (large) model.

Protocol: ``condition.motivated`` says which model the *next* batch trains; ``condition.update(loss)``
is called with the loss of the model that just stepped. ``state_dict`` / ``load_state_dict`` hold
plain Python values, so a condition survives checkpoints exactly.

The conditions a run can name are the registry :data:`CONDITIONS`; :func:`register_condition` adds
one (docs/MOTIVATION.md, "Adding a condition").
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError

# The models of a Motivation run, by role: the base (small) model and the motivated (large) one.
ROLES = ("base", "motivated")

# The conditions a run's ``condition`` option names, by name (filled by :func:`register_condition`).
CONDITIONS: dict[str, type[Condition]] = {}

_C = TypeVar("_C", bound="type[Condition]")


def register_condition(cls: _C) -> _C:
    """Class decorator: adds a :class:`Condition` subclass to :data:`CONDITIONS` under its ``name``,
    so that a run (``TrainConfig.condition``) and :func:`make_condition` can name it.

    Raises ``ConfigError`` (a ``ValueError``) if the class is not a ``Condition``, has no ``name`` (a
    non-empty string) or one already taken, if its ``roles`` are not distinct members of :data:`ROLES`,
    or if it trains one model only, as an already registered condition does (training one model is
    the same whatever the condition: :func:`classical_condition` names the one that does it)."""
    if not (isinstance(cls, type) and issubclass(cls, Condition)):
        raise ConfigError(f"register_condition registers Condition subclasses, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"condition class {cls.__name__} has no name: set the class attribute name = '...'")
    if name in CONDITIONS:
        raise ConfigError(
            f"condition {name!r} is already registered (by {CONDITIONS[name].__name__}): "
            f"give {cls.__name__} a name of its own"
        )
    roles = cls.roles
    if not isinstance(roles, tuple) or not roles or len(set(roles)) != len(roles) or not set(roles) <= set(ROLES):
        raise ConfigError(
            f"condition {name!r} declares roles={roles!r}: it must be a non-empty tuple of distinct roles "
            f"among {ROLES}, the models a run with it trains"
        )
    if len(roles) == 1 and roles[0] in _classical():
        raise ConfigError(
            f"condition {name!r} trains only {roles[0]!r}, as the registered condition "
            f"{_classical()[roles[0]]!r} does: use that one"
        )
    CONDITIONS[name] = cls
    return cls


def classical_condition(role: str) -> str:
    """The name of the registered condition that trains only ``role`` (``"base"``: ``never``,
    ``"motivated"``: ``always``), for ``seeking compare``'s classical arms. Raises ``ConfigError``
    for a role not in :data:`ROLES`."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
    return _classical()[role]


def _classical() -> dict[str, str]:
    """Role to the name of the registered condition that trains only that role."""
    return {cls.roles[0]: name for name, cls in CONDITIONS.items() if len(cls.roles) == 1}


class Condition:
    """Base class. Subclasses set ``self.motivated`` in :meth:`update`; a registered subclass
    (:func:`register_condition`) sets the class attributes below."""

    name: ClassVar[str]  # what a run's ``condition`` option calls it
    # The models a run with it ever trains (a subset of ROLES): the run builds and saves only these.
    roles: ClassVar[tuple[str, ...]] = ROLES
    reads_loss = False  # whether the loss decides: ``seeking compare`` needs such a condition for its motivated arm
    # the run options (k, p, window, ...) that from_options reads, others do nothing; besides k and p
    # (always given) from_options receives these by keyword, and ``step_flops`` if named
    options: ClassVar[tuple[str, ...]] = ()
    # places an exact count of the run's steps (from ``total``): a chain's pairs see only their own
    # levels' steps, so such a condition is refused for chains
    counts_run_steps: ClassVar[bool] = False

    def __init__(self) -> None:
        self.motivated = False

    @classmethod
    def from_options(cls, *, k: int, p: float, seed: int, total: int | None) -> Condition:
        """The condition a run's options describe (``total``: the run's number of steps, if known; the
        options named in ``options`` other than k and p come as further keywords)."""
        return cls()

    def update(self, loss: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"motivated": self.motivated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.motivated = bool(state["motivated"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_condition
class ConsecutiveDecrease(Condition):
    """The default rule (METHODS.md section 1): enter the motivated state after ``k`` strict
    decreases of the loss in a row; stay while each new loss is lower than the previous one; the
    first loss that does not decrease ends the episode and the count starts again from zero.

    Non-finite losses never enter the history: they end an episode and reset the count.
    """

    name = "decrease"
    reads_loss = True
    options = ("k",)

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"the motivation condition needs k >= 1 consecutive decreases, got {k!r}")
        self.k = k
        self.previous: float | None = None
        self.decreases = 0

    @classmethod
    def from_options(cls, *, k: int, p: float, seed: int, total: int | None) -> Condition:
        return cls(k)

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


@register_condition
class Never(Condition):
    """Classical training of the base model: the motivated model never steps."""

    name = "never"
    roles = ("base",)

    def update(self, loss: float) -> None:
        pass


@register_condition
class Always(Condition):
    """Classical training of the large model alone."""

    name = "always"
    roles = ("motivated",)

    def __init__(self) -> None:
        super().__init__()
        self.motivated = True

    def update(self, loss: float) -> None:
        pass


class RandomRate(Condition):  # not registered: a run knows its length, and uses RandomPlacement
    """Each batch independently trains the motivated model with probability ``p``, ignoring the
    loss: for a loop of unknown length. The realised fraction is ``p`` only in expectation (at
    ``p = 0.25``, 12 steps train the large model 0 times with probability 0.03), so the control of
    ``seeking train``/``compare`` is :class:`RandomPlacement`, which spends an exact count.
    """

    name = "rate"
    options = ("p",)

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


def check_placement(what: str, count: int, total: int) -> tuple[int, int]:
    """``(count, total)`` as ints for a condition that places exactly ``count`` motivated steps among
    ``total``; ``ConfigError`` naming ``what`` unless ``0 <= count <= total`` and ``total >= 1``."""
    if not 0 <= count <= total or total < 1:
        raise ConfigError(
            f"{what} places count in [0, total] motivated steps among total >= 1 steps, "
            f"got count={count!r}, total={total!r}"
        )
    return int(count), int(total)


def placement_state(condition: Any) -> dict[str, int]:
    """The state every exact-count condition has: ``count`` of ``total`` steps, ``decided`` and ``placed`` so far."""
    return {k: getattr(condition, k) for k in ("count", "total", "decided", "placed")}


def load_placement(condition: Any, state: dict[str, Any]) -> None:
    """Restore :func:`placement_state`; ``ConfigError`` for a state saved for another count or total."""
    if (state["count"], state["total"]) != (condition.count, condition.total):
        raise ConfigError(
            f"condition state was saved for {state['count']} of {state['total']} steps, "
            f"this condition places {condition.count} of {condition.total}"
        )
    condition.decided, condition.placed = int(state["decided"]), int(state["placed"])


@register_condition
class RandomPlacement(Condition):
    """The control: exactly ``count`` of the run's ``total`` steps train the motivated model, at
    positions drawn at random (every placement equally likely), ignoring the loss. ``seeking compare``
    gives it the motivated run's count, so both arms spend the same number of large-model steps and
    differ only in *which* steps: what is left is what the loss signal adds.

    Sequential selection sampling (Knuth, TAOCP vol. 2, 3.4.2, Algorithm S): each step is motivated
    with probability (still to place) / (steps left), an exact integer draw, so the count is exact
    whatever the draws. Decisions past ``total`` train the base. Its state is a few integers and the
    generator's state, so a resumed run continues the same placement.

    Raises ``ConfigError`` unless ``0 <= count <= total`` and ``total >= 1``.
    """

    name = "random"
    counts_run_steps = True
    options = ("p",)

    def __init__(self, count: int, total: int, seed: int = 0) -> None:
        super().__init__()
        self.count, self.total = check_placement("the random control", count, total)
        self.decided = 0  # steps decided so far (the current one included)
        self.placed = 0  # of which motivated
        self.rng = random.Random(seed)
        self._decide()

    @classmethod
    def from_options(cls, *, k: int, p: float, seed: int, total: int | None) -> Condition:
        if total is None:
            raise ConfigError("the random condition places round(p * total) steps: it needs the run's total steps")
        return cls(round(p * total), total, seed)

    @property
    def p(self) -> float:
        """The fraction of the steps it places on the motivated model: ``count / total``."""
        return self.count / self.total

    def _decide(self) -> None:
        left = self.total - self.decided
        self.motivated = left > 0 and self.rng.randrange(left) < self.count - self.placed
        self.decided += left > 0
        self.placed += self.motivated

    def update(self, loss: float) -> None:
        self._decide()

    def state_dict(self) -> dict[str, Any]:
        return {"motivated": self.motivated, **placement_state(self), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_placement(self, state)
        super().load_state_dict(state)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def __repr__(self) -> str:
        return f"RandomPlacement(count={self.count}, total={self.total})"


def make_condition(
    name: str,
    *,
    k: int = 2,
    p: float = 0.2,
    seed: int = 0,
    total: int | None = None,
    **options: Any,
) -> Condition:
    """Build a condition from its command-line name (a key of :data:`CONDITIONS`); ``total`` is the
    run's number of steps, which the random control needs. ``options``: further run options
    (``window``, ``z``, ``flops_saving``, ``epsilon``) and ``step_flops`` (the FLOPs of one training
    step by role); a condition receives those its ``options`` name. Raises ``ConfigError`` for an
    unknown name or option."""
    if name not in CONDITIONS:
        raise ConfigError(f"unknown condition {name!r}; choose one of: {', '.join(CONDITIONS)}")
    known = {option for cls in CONDITIONS.values() for option in cls.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown condition option(s) {', '.join(unknown)}; the conditions take {', '.join(sorted(known))}"
        )
    cls = CONDITIONS[name]
    return cls.from_options(k=k, p=p, seed=seed, total=total, **{o: v for o, v in options.items() if o in cls.options})
