"""Conditions beyond the paper's rule (issue 18): a noise-aware trend test, a budget controller
that spends an exact share of the steps (or FLOPs), and a bandit on the value of a motivated step.

The paper's rule fires at about the rate pure noise gives (k decreases in a row: 1/(k+1)!), and a
random placement at the same rate did as well (docs/RESULTS.md). Each condition here reads the loss
in a way noise cannot drive alone, or spends a fixed budget where the loss says it pays. Formulas and
defaults: docs/MOTIVATION.md, "Conditions that read the loss's trend, a budget, or a step's value".
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

from ..errors import ConfigError
from .conditions import ROLES, Condition, check_placement, load_placement, placement_state, register_condition


def slope_t(losses: list[float] | deque[float]) -> float:
    """The t statistic of the least-squares slope of ``losses`` against their index 0..n-1:
    ``b / se(b)`` with ``b = Sxy / Sxx``, ``se(b)^2 = SSE / ((n - 2) Sxx)`` and ``Sxx = n (n^2 - 1) / 12``
    (ordinary least squares; e.g. Wasserman, All of Statistics, 13.1). Under i.i.d. Gaussian losses it
    follows Student's t with n - 2 degrees of freedom, whatever the noise's scale: a threshold on it
    is a false-alarm rate, not a loss scale. A window on an exact line gives -inf, +inf or 0 by the
    slope's sign. Needs n >= 3 (a ``ValueError`` otherwise)."""
    n = len(losses)
    if n < 3:
        raise ValueError(f"a slope's t statistic needs at least 3 losses, got {n}")
    mean_x, mean_y = (n - 1) / 2, math.fsum(losses) / n
    sxx = n * (n * n - 1) / 12
    sxy = math.fsum((i - mean_x) * (y - mean_y) for i, y in enumerate(losses))
    syy = math.fsum((y - mean_y) ** 2 for y in losses)
    slope = sxy / sxx
    sse = syy - slope * sxy
    if sse <= 0.0:  # the losses lie on a line (to rounding): the slope is certain
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / math.sqrt(sse / ((n - 2) * sxx))


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 3:
        raise ConfigError(f"the loss window must hold at least 3 losses (a slope and its error), got {window!r}")
    return window


def _set_rng(rng: random.Random, state: Any) -> None:
    """``random.Random.setstate`` from a state that went through JSON or a checkpoint (lists for tuples)."""
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class _LossWindow(Condition):
    """The last ``window`` finite losses of whichever model stepped; a non-finite loss empties it."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = _check_window(window)
        self.losses: deque[float] = deque(maxlen=self.window)

    def _trend(self, loss: float) -> float | None:
        """Add ``loss``; the slope's t statistic of the full window, or ``None`` until it is full."""
        loss = float(loss)
        if not math.isfinite(loss):
            self.losses.clear()
            return None
        self.losses.append(loss)
        return slope_t(self.losses) if len(self.losses) == self.window else None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "window": self.window, "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["window"] != self.window:
            raise ConfigError(
                f"condition state was saved with window={state['window']}, this condition has window={self.window}"
            )
        super().load_state_dict(state)
        self.losses = deque((float(v) for v in state["losses"]), maxlen=self.window)


@register_condition
class SmoothedTrend(_LossWindow):
    """The next batch trains the motivated model while the loss is *significantly* falling: the t
    statistic of the least-squares slope of the last ``window`` losses (:func:`slope_t`) is below
    ``-z``. Under pure noise it fires at the rate ``P(T_{window-2} < -z)`` (0.040 at the defaults
    window 10, z 2), not 1/(k+1)! as the consecutive-decrease rule does; on a falling loss it fires
    as soon as the fall stands out of the noise. Until the window is full (and after a non-finite
    loss empties it) the base trains.
    """

    name = "trend"
    reads_loss = True
    options = ("window", "z")

    def __init__(self, window: int = 10, z: float = 2.0) -> None:
        super().__init__(window)
        if isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z):
            raise ConfigError(f"the trend condition's threshold z must be a finite number, got {z!r}")
        self.z = float(z)

    @classmethod
    def from_options(cls, *, k: int, p: float, seed: int, total: int | None, **options: Any) -> Condition:
        return cls(**options)

    def update(self, loss: float) -> None:
        t = self._trend(loss)
        self.motivated = t is not None and t < -self.z

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "z": self.z}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["z"] != self.z:
            raise ConfigError(f"condition state was saved with z={state['z']}, this condition has z={self.z}")
        super().load_state_dict(state)

    def __repr__(self) -> str:
        return f"SmoothedTrend(window={self.window}, z={self.z})"


def motivated_share(flops_saving: float, step_flops: dict[str, int]) -> float:
    """The share ``p`` of steps on the motivated model that makes a run's training FLOPs those of
    the motivated model alone divided by ``flops_saving``: from
    ``p F_m + (1 - p) F_b = F_m / s``, ``p = (F_m / s - F_b) / (F_m - F_b)`` (``F``: FLOPs of one
    training step, ``step_flops`` by role as ``seeking.flops.loss_step_flops`` counts them).

    Raises ``ConfigError`` unless ``1 <= s <= F_m / F_b`` (s = 1: every step large; s = F_m / F_b:
    none) and the motivated step costs more than the base's."""
    base, large = step_flops["base"], step_flops["motivated"]
    if not 0 < base < large:
        raise ConfigError(
            f"a FLOPs saving needs a motivated step that costs more than a base step, got {large} and {base} FLOPs"
        )
    if isinstance(flops_saving, bool) or not 1.0 <= flops_saving <= large / base:
        raise ConfigError(
            f"flops_saving must be between 1 (every step on the large model) and {large / base:.4g} (the base "
            f"alone: its step costs {base:.4g} FLOPs, the large model's {large:.4g}), got {flops_saving!r}"
        )
    return min(1.0, max(0.0, (large / flops_saving - base) / (large - base)))


@register_condition
class BudgetController(_LossWindow):
    """Exactly ``count`` of the run's ``total`` steps train the motivated model (so its FLOPs are
    fixed in advance), placed where the loss falls fastest: after each step, with ``left`` steps and
    ``budget`` motivated steps still to place, the next step is motivated

    - always if ``budget >= left``, never if ``budget == 0`` (so the count is exact);
    - otherwise if the slope's t statistic of the last ``window`` losses (:func:`slope_t`) is strictly
      lower than a fraction ``budget / left`` of the last ``10 x window`` statistics (itself included):
      it spends at the rate still needed, on the steps where the loss falls most clearly. An
      under-spent budget raises that fraction, an over-spent one lowers it.

    Until the window is full the base trains (unless the budget forces the large model).
    ``from_options``: ``count = round(p * total)``, or with ``flops_saving`` the share
    :func:`motivated_share` gives. Raises ``ConfigError`` unless ``0 <= count <= total``, ``total >= 1``.
    """

    name = "budget"
    counts_run_steps = True
    reads_loss = True
    options = ("p", "window", "flops_saving", "step_flops")
    # statistics ranked, in windows: long enough to hold phases of fall and of noise (a rank among the
    # last few alone spreads the steps evenly over a phase of steady fall)
    MEMORY = 10

    def __init__(self, count: int, total: int, window: int = 10) -> None:
        super().__init__(window)
        self.count, self.total = check_placement("the budget condition", count, total)
        self.decided = 0  # steps decided so far (the current one included)
        self.placed = 0  # of which motivated
        self.scores: deque[float] = deque(maxlen=self.MEMORY * self.window)
        self._decide(None)

    @classmethod
    def from_options(
        cls,
        *,
        k: int,
        p: float,
        seed: int,
        total: int | None,
        flops_saving: float | None = None,
        step_flops: dict[str, int] | None = None,
        **options: Any,
    ) -> Condition:
        if total is None:
            raise ConfigError("the budget condition spends an exact count of steps: it needs the run's total steps")
        if flops_saving is not None:
            if step_flops is None:
                raise ConfigError("the budget condition's flops_saving needs the FLOPs of one step of each model")
            p = motivated_share(flops_saving, step_flops)
        return cls(round(p * total), total, **options)

    @property
    def p(self) -> float:
        """The share of the run's steps it places on the motivated model: ``count / total``."""
        return self.count / self.total

    def _decide(self, score: float | None) -> None:
        left, budget = self.total - self.decided, self.count - self.placed
        if score is not None:
            self.scores.append(score)
        if left <= 0 or budget == 0:
            self.motivated = False
        elif budget >= left:
            self.motivated = True
        else:
            below = sum(s < score for s in self.scores) if score is not None else None
            # strictly below the current score: how many recent statistics fell more clearly
            self.motivated = below is not None and below < budget / left * len(self.scores)
        self.decided += left > 0
        self.placed += self.motivated

    def update(self, loss: float) -> None:
        self._decide(self._trend(loss))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            **placement_state(self),
            "scores": list(self.scores),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_placement(self, state)
        super().load_state_dict(state)
        self.scores = deque((float(v) for v in state["scores"]), maxlen=self.MEMORY * self.window)

    def __repr__(self) -> str:
        return f"BudgetController(count={self.count}, total={self.total}, window={self.window})"


@register_condition
class StepValue(Condition):
    """A two-armed bandit on what a step buys per FLOP: the arms are the base and the motivated
    model; a choice trains its model on ``HOLD = 2`` consecutive batches.

    **Value.** When one model steps twice in a row, the loss before its second step, ``L'``, is
    measured after its first, whose loss was ``L``: that step bought ``(L - L') / F`` loss per FLOP
    (``F``: the model's FLOPs per training step). Pairs across a switch are not used (the two
    models' losses differ by more than a step's improvement). Each arm's value is an exponential
    moving average of its rewards, ``v <- v + a (r - v)`` with ``a = 2 / (window + 1)`` (the
    first reward sets it).

    **Choice** (epsilon-greedy, Sutton and Barto, Reinforcement Learning, 2.2): an arm with no value
    yet is chosen; otherwise with probability ``epsilon`` an arm at random, else the arm of highest
    value (the base on a tie). Its ``p`` is what the values make it: ``seeking compare`` gives its
    random control the same count. A non-finite loss is no reward and starts no pair.
    """

    name = "value"
    reads_loss = True
    options = ("window", "epsilon", "step_flops")
    HOLD = 2  # batches per choice: one before/after pair on one model per choice at least

    def __init__(self, step_flops: dict[str, int], window: int = 10, epsilon: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if set(step_flops) != set(ROLES) or not all(isinstance(f, int) and f > 0 for f in step_flops.values()):
            raise ConfigError(
                f"the value condition needs the FLOPs of one training step of each model, {ROLES}, got {step_flops!r}"
            )
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"the value condition's exploration rate epsilon must be in [0, 1], got {epsilon!r}")
        self.step_flops = dict(step_flops)
        self.window, self.epsilon = _check_window(window), float(epsilon)
        self.rate = 2.0 / (self.window + 1)
        self.values: dict[str, float | None] = dict.fromkeys(ROLES)
        self.rewards = dict.fromkeys(ROLES, 0)  # rewards seen, by arm
        self.previous: float | None = None  # the last finite loss, of the model that stepped then
        self.previous_role: str | None = None
        self.held = 1  # batches the current choice has trained (the first batch trains the base)
        self.rng = random.Random(seed)

    @classmethod
    def from_options(
        cls,
        *,
        k: int,
        p: float,
        seed: int,
        total: int | None,
        step_flops: dict[str, int] | None = None,
        **options: Any,
    ) -> Condition:
        if step_flops is None:
            raise ConfigError("the value condition needs the FLOPs of one training step of each model")
        return cls(step_flops, seed=seed, **options)

    def update(self, loss: float) -> None:
        loss, role = float(loss), ROLES[self.motivated]  # the model that just stepped: ROLES[False] is the base
        if not math.isfinite(loss):
            self.previous = self.previous_role = None
        else:
            if self.previous_role == role:
                reward = (self.previous - loss) / self.step_flops[role]
                value = self.values[role]
                self.values[role] = reward if value is None else value + self.rate * (reward - value)
                self.rewards[role] += 1
            self.previous, self.previous_role = loss, role
        if self.held < self.HOLD:
            self.held += 1
            return
        self.held = 1
        unseen = [arm for arm in reversed(ROLES) if self.values[arm] is None]
        if unseen:
            choice = unseen[0]
        elif self.rng.random() < self.epsilon:
            choice = self.rng.choice(ROLES)
        else:
            choice = "motivated" if self.values["motivated"] > self.values["base"] else "base"
        self.motivated = choice == "motivated"

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "window": self.window,
            "epsilon": self.epsilon,
            "step_flops": dict(self.step_flops),
            "values": dict(self.values),
            "rewards": dict(self.rewards),
            "previous": self.previous,
            "previous_role": self.previous_role,
            "held": self.held,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state["window"], state["epsilon"], state["step_flops"])
        if saved != (self.window, self.epsilon, self.step_flops):
            raise ConfigError(
                f"condition state was saved with window, epsilon, step FLOPs {saved}, this condition has "
                f"{(self.window, self.epsilon, self.step_flops)}"
            )
        super().load_state_dict(state)
        self.values = {arm: None if v is None else float(v) for arm, v in state["values"].items()}
        self.rewards = {arm: int(n) for arm, n in state["rewards"].items()}
        self.previous, self.previous_role, self.held = state["previous"], state["previous_role"], int(state["held"])
        _set_rng(self.rng, state["rng"])

    def __repr__(self) -> str:
        return f"StepValue(window={self.window}, epsilon={self.epsilon})"
