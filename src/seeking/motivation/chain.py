"""Chains of nested models: train once, deploy N (issue 18, part 2).

A chain is ``N >= 2`` models, each containing the one below (ResNet-20 inside 32 inside 56; GPT 4
inside 8 inside 12 layers), trained in one run, one model per batch. It is built from the
:class:`~seeking.motivation.Motivator` of each adjacent pair, so the weights maps, the syncs, the
optimizer-state and BatchNorm policies and the start check are the Motivator's own.

**The rule** (**choice**; docs/MOTIVATION.md, "Chains of models"). Pair ``i`` (levels ``i`` and
``i + 1``) has its own condition, the *climb condition of level i*:

- The level that trains the next batch is the lowest level whose climb condition does not fire:
  level 0 trains unless its condition fires; then level 1 trains unless its own condition fires,
  and so on; the top level trains when every condition below it fires.
- The loss of a step at level ``L`` goes to the conditions of the two pairs that contain level ``L``:
  pair ``L - 1`` (level ``L`` is its motivated model: is the climb still paying?) and pair ``L`` (level
  ``L`` is its base: should it climb?). A pair's condition therefore sees only the losses of its
  own two levels, exactly as a two-model Motivator's condition sees the losses of its two models;
  while a level above its pair trains, it waits in the state it was in.

So a chain of two models is the Motivator (tested bit for bit), and each pair's counters (steps,
``p``, switches) are those of a Motivator that saw only its pair's steps.

**Syncs.** Moving from level ``a`` to level ``b`` syncs through every pair in between, in order
(``a -> a+1 -> ... -> b`` or down): each pair copies (or carries) only its own map, and since each
model contains the one below, the copies compose: the model about to step always holds what every
other level last learned of the weights it shares with them (tested against syncing all levels
after every step). :meth:`Chain.finish` brings every level up to date. With ``sync="share"`` each
level's shared tensors become views of the level above, aliased from the top pair down, so a weight
shared by all levels is one storage: the top model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .batchnorm import deployable_copy
from .conditions import ROLES, Condition
from .motivator import (
    DEFAULT_SYNC,
    BatchNormPolicy,
    JointOptimizer,
    Motivator,
    OptimizerStatePolicy,
    SyncMode,
    loss_value,
)
from .weights_map import WeightMap


def chain_roles(n: int) -> list[str]:
    """The roles of the ``n`` levels of a chain, smallest first: ``base``, ``level1``, ...,
    ``level{n-2}``, ``motivated``. The ends keep the pair's roles (a chain of two is a pair, and the
    files, logs and tables of a run name its smallest and largest models as a pair's)."""
    return ["base", *(f"level{i}" for i in range(1, n - 1)), "motivated"]


def run_models(names: Sequence[str], trained: Sequence[str]) -> dict[str, str]:
    """The models a run trains, by role: ``names`` are the run's models smallest first (base, the
    intermediate levels, motivated), ``trained`` its condition's roles (a subset of
    :data:`~seeking.motivation.conditions.ROLES`). A condition of both roles trains every level; one
    of a single role trains that end of the chain alone (``never``: the base, ``always``: the top)."""
    models = dict(zip(chain_roles(len(names)), names, strict=True))
    return {role: name for role, name in models.items() if role in trained or set(ROLES) <= set(trained)}


def check_growing(models: Sequence[nn.Module], names: Sequence[str]) -> None:
    """Refuse levels given out of order: each model must have more parameters than the one below it
    (it contains it). ``names`` name the levels in the message (a run's model names, or the roles).
    Raises ``ConfigError`` naming the first adjacent pair out of order (by position and name; a model
    given twice, or two of the same size, said as such) and, as the fix, the models by size with one
    of each size, which always differs from the order given (before any pair's weights map is
    inferred, whose message speaks of a pair's "base" and "motivated")."""
    sizes = [sum(p.numel() for p in model.parameters()) for model in models]
    for low in range(len(models) - 1):
        if sizes[low] < sizes[low + 1]:
            continue
        below, above = names[low], names[low + 1]
        if below == above:
            problem = f"{below} is given twice, as levels {low} and {low + 1} ({sizes[low]:,} parameters)"
        elif sizes[low] == sizes[low + 1]:
            problem = f"level {low} {below} and level {low + 1} {above} have as many parameters ({sizes[low]:,})"
        else:
            problem = (
                f"level {low} {below} ({sizes[low]:,} parameters) is not smaller than level {low + 1} {above} "
                f"({sizes[low + 1]:,})"
            )
        by_size: dict[int, str] = {}  # the first model given of each size, smallest first
        for size, name in sorted(zip(sizes, names, strict=True), key=lambda pair: pair[0]):
            by_size.setdefault(size, name)
        fix = f"give them by size, {':'.join(by_size.values())}"
        if len(by_size) < 2:
            fix = "a chain needs models of different sizes"
        elif len(by_size) < len(names):
            fix += " (one model of each size)"
        raise ConfigError(f"a chain's models go smallest first (each contains the one before), but {problem}: {fix}")


class Chain:
    """Decides which of ``N`` nested models trains on each batch (the rule above) and keeps their
    shared weights in sync; a :class:`~seeking.motivation.plan.TrainingPlan`.

    Args:
        models: the levels, smallest first; each contains the one before it.
        conditions: ``N - 1`` conditions, one per adjacent pair: condition ``i`` decides whether level
            ``i`` climbs to level ``i + 1``. Distinct objects (each keeps its own loss history).
        optimizers: one per model, over its own parameters.
        weight_maps: ``N - 1`` maps, map ``i`` from level ``i`` into level ``i + 1`` (inferred when not given).
        optimizer_state, batchnorm, preserve_function, example_input, average_loss, process_group:
            as for :class:`~seeking.motivation.Motivator`, applied to every pair (the start is checked
            pair by pair, bottom up: each level starts as the function of the one below).
        sync: ``"copy"`` or ``"share"``, as for the Motivator.
        state: what :meth:`state_dict` returned, to resume over restored models (nothing initialised,
            copied or checked); load the optimizers' states too (``chain.optimizer.load_state_dict``).

    Raises ``ConfigError`` for fewer than two models, levels of three or more out of order (:func:`check_growing`), a
    count of conditions, optimizers or maps that is not the chain's, or one condition object given to two pairs.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        conditions: Sequence[Condition],
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        weight_maps: Sequence[WeightMap] | None = None,
        optimizer_state: OptimizerStatePolicy = "carried",
        batchnorm: BatchNormPolicy = "separate",
        preserve_function: bool = True,
        sync: SyncMode = DEFAULT_SYNC,
        example_input: torch.Tensor | tuple[Any, ...] | None = None,
        state: dict[str, Any] | None = None,
        average_loss: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        n = len(models)
        if n < 2:
            raise ConfigError(f"a chain needs at least two models, got {n}")
        counts = {"conditions": len(conditions), "optimizers": len(optimizers)}
        if weight_maps is not None:
            counts["weight_maps"] = len(weight_maps)
        wanted = {"conditions": n - 1, "optimizers": n, "weight_maps": n - 1}
        for what, count in counts.items():
            if count != wanted[what]:
                raise ConfigError(
                    f"a chain of {n} models needs {wanted[what]} {what} (one per level or pair), got {count}"
                )
        if len({id(c) for c in conditions}) != len(conditions):
            raise ConfigError("each pair of a chain needs its own condition object: one was given to two pairs")
        self.names = chain_roles(n)
        if n > 2:  # a pair's order is its Motivator's check (after the checks that it is a pair at all)
            check_growing(models, self.names)
        self.models = dict(zip(self.names, models, strict=True))
        self.optimizers = dict(zip(self.names, optimizers, strict=True))
        self.average_loss, self.process_group = average_loss, process_group
        pair_states = state["pairs"] if state is not None else [None] * (n - 1)
        # Built bottom up: pair i's start copies level i (which holds level i - 1's weights) into level i + 1.
        # Syncs are the pairs' own copies; zero-copy sharing is set up below, once every pair has started.
        self.pairs = [
            Motivator(
                models[i],
                models[i + 1],
                conditions[i],
                optimizers[i],
                optimizers[i + 1],
                weight_map=weight_maps[i] if weight_maps is not None else None,
                optimizer_state=optimizer_state,
                batchnorm=batchnorm,
                preserve_function=preserve_function,
                example_input=example_input,
                state=pair_states[i],
                average_loss=False,  # the chain reads (and averages) each loss once, in observe()
                sync="copy",
            )
            for i in range(n - 1)
        ]
        if sync == "share":
            # top down: a level made a view of the level above before it becomes the storage of the one below,
            # so a weight shared by every level ends as one storage, the top model's
            for i in reversed(range(n - 1)):
                self.pairs[i].share()
        self.optimizer = JointOptimizer(self)
        self.steps = self.switches = 0
        self.level_steps = [0] * n
        self.level = self._wanted()
        for i, pair in enumerate(self.pairs):  # each pair's active model follows the level (a start: no sync)
            pair.active = "motivated" if self.level > i else "base"
        if state is not None:  # the pairs resumed their own actives and conditions
            self.load_state_dict(state)

    @property
    def active(self) -> str:
        """The role (:func:`chain_roles`) of the level that trains the next batch."""
        return self.names[self.level]

    @property
    def motivated_steps(self) -> int:
        """Steps that trained a model above level 0."""
        return self.steps - self.level_steps[0]

    @property
    def p(self) -> float:
        """Fraction of the steps so far that trained a model above level 0."""
        return self.motivated_steps / self.steps if self.steps else 0.0

    @property
    def steps_by_model(self) -> dict[str, int]:
        """Steps so far that trained each level, by role."""
        return dict(zip(self.names, self.level_steps, strict=True))

    @property
    def level_p(self) -> list[float]:
        """Fraction of the steps so far that trained each level (sums to 1 once a step is taken)."""
        return [count / self.steps if self.steps else 0.0 for count in self.level_steps]

    def _wanted(self) -> int:
        """The lowest level whose climb condition does not fire (the top level if all fire)."""
        return next((i for i, pair in enumerate(self.pairs) if not pair.condition.motivated), len(self.pairs))

    def select(self) -> tuple[nn.Module, JointOptimizer]:
        """The model that trains on the next batch and :attr:`optimizer`; climbs or descends level by
        level (each pair on the way syncs) when the conditions changed."""
        wanted = self._wanted()
        if wanted != self.level:
            self.switches += 1
        while self.level < wanted:
            self.pairs[self.level].switch("motivated")
            self.level += 1
        while self.level > wanted:
            self.pairs[self.level - 1].switch("base")
            self.level -= 1
        return self.models[self.active], self.optimizer

    def observe(self, loss: torch.Tensor | float) -> None:
        """Record that the active level stepped with this loss: the pairs that contain the level observe it.
        Under ``torch.distributed`` (and ``average_loss``) the loss is averaged first, as the Motivator does."""
        value = loss_value(loss, self.average_loss, self.process_group, self.models[self.active])
        self.steps += 1
        self.level_steps[self.level] += 1
        for pair in self.pairs[max(self.level - 1, 0) : self.level + 1]:
            pair.observe(value)

    def finish(self) -> None:
        """Bring every level up to date with the active one: sync down to level 0 and up to the top."""
        for i in reversed(range(self.level)):
            self.pairs[i].finish()
        for pair in self.pairs[self.level :]:
            pair.finish()

    def deployable(self, calibration: Iterable[torch.Tensor] | None) -> dict[str, nn.Module]:
        """Every level as it should be saved and deployed (see :meth:`Motivator.deployable`), by role."""
        self.finish()
        if calibration is not None:
            calibration = list(calibration)  # an iterator would be used up by the first model
        return {name: deployable_copy(model, calibration) for name, model in self.models.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "steps": self.steps,
            "switches": self.switches,
            "level_steps": list(self.level_steps),
            "pairs": [pair.state_dict() for pair in self.pairs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["pairs"]) != len(self.pairs):
            raise ConfigError(
                f"chain state was saved for {len(state['pairs']) + 1} levels, this chain has {len(self.models)}"
            )
        for pair, pair_state in zip(self.pairs, state["pairs"], strict=True):
            pair.load_state_dict(pair_state)
        self.level, self.steps, self.switches = int(state["level"]), int(state["steps"]), int(state["switches"])
        self.level_steps = [int(count) for count in state["level_steps"]]
