"""The Motivator: one object that a training loop asks, batch by batch, which model to train.

    motivator = Motivator(base, motivated, ConsecutiveDecrease(k=2), base_opt, motivated_opt)
    for x, y in batches:
        model, optimizer = motivator.select()      # switches (and syncs) when the condition says so
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        motivator.observe(loss)                     # feeds the condition
    motivator.finish()                              # both models now hold the latest shared weights
    models = motivator.deployable(calibration)      # copies to save, BatchNorm statistics re-estimated

A learning-rate schedule for both models: build any PyTorch scheduler over ``motivator.optimizer``
(the optimizer ``select`` returns: both optimizers' parameter groups, stepping the active one) and
step it after each batch, whichever model trained: one clock, no order warning.

Every batch trains exactly one model. Shared weights are copied through the :class:`WeightMap` at
each switch, so the model about to step always starts from what the other one learned.
``observe`` reads the loss as a Python float: the condition decides the next batch's model from
it, so one host sync per step is inherent to the method. Under ``torch.distributed`` it reads the
loss averaged over the processes, so that every process takes the same decisions.

Resuming: build the Motivator over the restored models and optimizers with ``state=`` (what
:meth:`Motivator.state_dict` returned); it then leaves every tensor as restored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .batchnorm import deployable_copy
from .conditions import Condition
from .weights_map import WeightMap

if TYPE_CHECKING:
    from .chain import Chain


class JointOptimizer(torch.optim.Optimizer):
    """The two optimizers of a :class:`Motivator` (or the N of a :class:`~seeking.motivation.chain.Chain`)
    as one, so that one PyTorch learning-rate scheduler drives both: ``param_groups`` are the base
    optimizer's groups then the motivated one's (the very same dicts, so a scheduler that sets
    ``group["lr"]`` or ``group["momentum"]`` sets both); ``step`` steps the optimizer of the active
    model only; ``zero_grad`` clears both models' gradients. ``state_dict`` holds both optimizers'
    states (``{"base": ..., "motivated": ...}``; a chain's by level name).

    A scheduler per optimizer would not do: stepping both after each batch warns (PyTorch checks that
    a scheduler's optimizer stepped first, and the idle one did not), and stepping only the one that
    trained gives each model its own clock.
    """

    def __init__(self, motivator: Motivator | Chain) -> None:
        self.motivator = motivator
        # Optimizer.__init__ sets up the hooks and state schedulers expect; the group it builds (of a
        # placeholder tensor, as it needs one) goes to the setter below and is dropped
        super().__init__([torch.empty(0)], dict(next(iter(motivator.optimizers.values())).defaults))

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The base optimizer's groups, then the motivated one's, read at each use: loading an
        optimizer's state replaces its group dicts."""
        return [g for o in self.motivator.optimizers.values() for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        pass  # the groups are the two optimizers' own

    def step(self, closure: Any = None) -> Any:
        return self.motivator.optimizers[self.motivator.active].step(closure)

    def state_dict(self) -> dict[str, Any]:
        return {name: o.state_dict() for name, o in self.motivator.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, o in self.motivator.optimizers.items():
            o.load_state_dict(state_dict[name])


def loss_value(
    loss: torch.Tensor | float, average: bool, process_group: dist.ProcessGroup | None, model: nn.Module
) -> float:
    """The loss as a Python float: averaged over the processes of ``process_group`` when ``average``
    and ``torch.distributed`` is initialised (``model``: where a float loss goes to be all-reduced)."""
    if not (average and dist.is_available() and dist.is_initialized()):
        return float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    # a copy: the all-reduce works in place, and the caller's loss must stay its own
    if torch.is_tensor(loss):
        value = loss.detach().reshape(1).to(torch.float32, copy=True)
    else:  # on the models' device, where the group's backend (NCCL: CUDA) communicates
        value = torch.tensor([float(loss)], device=next(model.parameters()).device)
    dist.all_reduce(value, group=process_group)
    # the sum divided on the host, as seeking's trainer does: the same float, the same decisions
    return value.item() / dist.get_world_size(process_group)


OptimizerStatePolicy = Literal["carried", "separate"]
BatchNormPolicy = Literal["separate", "shared"]
SyncMode = Literal["copy", "share"]
OPTIMIZER_STATE_POLICIES = ("carried", "separate")
BATCHNORM_POLICIES = ("separate", "shared")
SYNC_MODES = ("copy", "share")
DEFAULT_SYNC: SyncMode = "share"  # bit-identical to "copy" and copies less: docs/MOTIVATION.md, "Sync"


class Motivator:
    """Decides which model trains on each batch and keeps their shared weights in sync.

    Args:
        base, motivated: the small and the large model; the large one contains the small one.
        condition: decides from the loss whether the next batch trains the motivated model.
        base_optimizer, motivated_optimizer: one optimizer per model, over its own parameters.
        weight_map: inferred (:meth:`WeightMap.infer`: by name, by role where names are positions) when not given.
        optimizer_state: ``"carried"`` (default) copies the optimizer state of shared weights
            through the map at each switch, like the weights; ``"separate"`` lets each optimizer
            keep its own, possibly stale, state.
        batchnorm: ``"separate"`` (default) keeps each model's running statistics, measured on its
            own forward passes; ``"shared"`` copies mapped running statistics at each switch too.
        preserve_function: zero-initialise the last norm of each added residual block so the
            motivated model starts as the base's function (default True), and check that it
            does (below).
        example_input: a small batch both models accept (a tensor, or a tuple of positional
            arguments), used once to check the start: the map must read back (every mapped region
            of the motivated model equals its base tensor) and, in eval mode, the motivated model
            must compute the base's function. A ConfigError with the map printed refuses a pair
            that should be exact and is not; pairs that cannot be exact (width growth, extra
            capacity not made identity: :meth:`WeightMap.inexact_reasons`) get a warning. When
            not given, the function is checked on the first forward pass of either model, with
            its arguments (a resumed Motivator skips it: its models no longer start together).
        state: what :meth:`state_dict` returned, to resume: the models hold restored weights (a
            framework restored them, e.g. Lightning before ``configure_optimizers``), so nothing is
            initialised, copied or checked; the condition and the counters resume from ``state``.
            Load the optimizers' states as well (``motivator.optimizer.load_state_dict``, or each
            optimizer's own). Without it (default) the Motivator starts a run: it initialises the
            extra capacity and copies the base's tensors into the motivated model, which would
            overwrite restored ones.
        average_loss: whether :meth:`observe` averages the loss over the processes of
            ``process_group`` when ``torch.distributed`` is initialised (default True: every
            process then takes the same decisions; one all-reduce of one number per step). False
            for a loop that passes a loss it already averaged (seeking's own trainer does, in the
            all-reduce that also carries its non-finite and stop flags): averaging again would
            change nothing but cost a collective. Without ``torch.distributed`` it changes nothing.
        process_group: the processes over which the loss is averaged (default: all of them).
        sync: ``"share"`` (default) makes the base's shared tensors, and their carried optimizer
            state, views of the motivated ones where the region is contiguous (zero-copy; the same
            results as copying, bit for bit); ``"copy"`` copies shared weights at each switch, as the
            paper describes. New storage (``Module.to``, an optimizer's ``load_state_dict``) ends
            the sharing of those tensors until the next switch, which copies them and shares again.
    """

    def __init__(
        self,
        base: nn.Module,
        motivated: nn.Module,
        condition: Condition,
        base_optimizer: torch.optim.Optimizer,
        motivated_optimizer: torch.optim.Optimizer,
        *,
        weight_map: WeightMap | None = None,
        optimizer_state: OptimizerStatePolicy = "carried",
        batchnorm: BatchNormPolicy = "separate",
        preserve_function: bool = True,
        sync: SyncMode = DEFAULT_SYNC,
        example_input: torch.Tensor | tuple[Any, ...] | None = None,
        state: dict[str, Any] | None = None,
        average_loss: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if optimizer_state not in OPTIMIZER_STATE_POLICIES:
            raise ConfigError(f"optimizer_state must be one of {OPTIMIZER_STATE_POLICIES}, got {optimizer_state!r}")
        if batchnorm not in BATCHNORM_POLICIES:
            raise ConfigError(f"batchnorm must be one of {BATCHNORM_POLICIES}, got {batchnorm!r}")
        if sync not in SYNC_MODES:
            raise ConfigError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        self.models = {"base": base, "motivated": motivated}
        self.optimizers = {"base": base_optimizer, "motivated": motivated_optimizer}
        self.condition = condition
        self.map = weight_map if weight_map is not None else WeightMap.infer(base, motivated)
        self.optimizer_state = optimizer_state
        self.batchnorm = batchnorm
        self.average_loss, self.process_group = average_loss, process_group
        self.added_blocks: list[str] = []
        self.start_difference: float | None = None
        self._pending_check: list[Any] = []
        if state is None:
            self._start(example_input, preserve_function)
        self.sync: SyncMode = "copy"
        if sync == "share":
            self.share()
        self.active = "motivated" if condition.motivated else "base"
        self.optimizer = JointOptimizer(self)
        self.steps = 0
        self.motivated_steps = 0
        self.switches = 0
        if state is not None:
            self.load_state_dict(state)

    def share(self) -> None:
        """Zero-copy sharing (``sync="share"``): make the base's shared tensors views of their regions of
        the motivated ones (:meth:`WeightMap.alias`); from the next switch on, the carried optimizer
        state of those tensors is shared the same way."""
        self.map.alias(self.models["base"], self.models["motivated"], buffers=self.batchnorm == "shared")
        self.sync = "share"

    def _start(self, example_input: torch.Tensor | tuple[Any, ...] | None, preserve_function: bool) -> None:
        """The start of a run: the extra capacity initialised, the base's tensors copied into the
        motivated model, and the promise of the same function checked."""
        base, motivated = self.models["base"], self.models["motivated"]
        self.added_blocks = self.map.init_extra_capacity(motivated) if preserve_function else []
        # The motivated model starts from the base's weights and statistics.
        self.map.copy(base, motivated, "to_motivated", buffers=True)
        # The promise of the same function at the start is checked (preserve_function makes it).
        reasons = self.map.inexact_reasons(self.added_blocks)
        probe = example_input if isinstance(example_input, tuple) or example_input is None else (example_input,)
        self.start_difference = self.map.check_start(base, motivated, probe if preserve_function else None, reasons)
        if preserve_function and probe is None:

            def check_on_first_batch(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                self._cancel_pending_check()
                self.start_difference = self.map.check_start(base, motivated, args, reasons, kwargs)

            self._pending_check = [
                m.register_forward_pre_hook(check_on_first_batch, with_kwargs=True) for m in (base, motivated)
            ]

    @property
    def p(self) -> float:
        """Fraction of the steps so far that trained the motivated model."""
        return self.motivated_steps / self.steps if self.steps else 0.0

    @property
    def steps_by_model(self) -> dict[str, int]:
        """Steps so far that trained each model, by role."""
        return {"base": self.steps - self.motivated_steps, "motivated": self.motivated_steps}

    def select(self) -> tuple[nn.Module, JointOptimizer]:
        """The model that trains on the next batch and :attr:`optimizer`, whose ``step`` steps that
        model's optimizer; switches if the condition changed."""
        self.switch("motivated" if self.condition.motivated else "base")
        return self.models[self.active], self.optimizer

    def switch(self, role: str) -> None:
        """Make ``role`` the active model: if it is not, sync the shared weights (and the optimizer
        state, if carried) from the active model to it and count a switch. :meth:`select` calls it
        with the condition's choice; a :class:`~seeking.motivation.chain.Chain` with its own."""
        if role != self.active:
            self._sync(self.active, role)
            self.active = role
            self.switches += 1

    def observe(self, loss: torch.Tensor | float) -> None:
        """Record that the active model stepped with this training loss (a tensor or a float).

        When ``torch.distributed`` is initialised (and ``average_loss``), the condition reads the
        loss averaged over the processes of ``process_group``: call it on every process, at every
        step, as any collective. A non-finite loss on one process makes the average non-finite on
        all of them, so they all end the episode alike."""
        self.steps += 1
        self.motivated_steps += self.active == "motivated"
        self.condition.update(self._loss_value(loss))

    def _loss_value(self, loss: torch.Tensor | float) -> float:
        return loss_value(loss, self.average_loss, self.process_group, self.models[self.active])

    def finish(self) -> None:
        """Copy the shared weights from the model that stepped last to the other one."""
        self._sync(self.active, "base" if self.active == "motivated" else "motivated")

    def deployable(self, calibration: Iterable[torch.Tensor] | None) -> dict[str, nn.Module]:
        """Both models as they should be saved and deployed: :meth:`finish`, then a copy of each that
        owns its tensors, with its BatchNorm running statistics re-estimated on ``calibration``
        (input batches as training sees them: augmented and normalized; read once, the same batches
        serve both models) or, with ``None``, kept as they are. Training may go on with the Motivator's own models.

        Re-estimation is what makes the motivated model usable: it trains on a fraction of the
        batches, so its running statistics describe older weights (docs/MOTIVATION.md). The copies
        also end zero-copy sharing, so re-estimating one model cannot overwrite the other's
        statistics. Returns ``{"base": ..., "motivated": ...}``.
        """
        self.finish()
        if calibration is not None:
            calibration = list(calibration)  # an iterator would be used up by the first model
        return {name: deployable_copy(model, calibration) for name, model in self.models.items()}

    def _sync(self, source: str, target: str) -> None:
        direction = "to_motivated" if target == "motivated" else "to_base"
        base, motivated = self.models["base"], self.models["motivated"]
        self.map.copy(base, motivated, direction, buffers=self.batchnorm == "shared")
        if self.optimizer_state == "carried":
            self.map.carry_optimizer_state(
                self.optimizers[source], self.optimizers[target], base, motivated, direction, share=self.sync == "share"
            )

    def _cancel_pending_check(self) -> None:
        for handle in self._pending_check:
            handle.remove()
        self._pending_check = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "steps": self.steps,
            "motivated_steps": self.motivated_steps,
            "switches": self.switches,
            "condition": self.condition.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cancel_pending_check()  # resumed models hold trained weights: the start is long past
        self.active = state["active"]
        self.steps = int(state["steps"])
        self.motivated_steps = int(state["motivated_steps"])
        self.switches = int(state["switches"])
        self.condition.load_state_dict(state["condition"])
