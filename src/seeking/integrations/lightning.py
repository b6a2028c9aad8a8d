"""Excitation and Motivation under Lightning.

Excitation: return it from ``configure_optimizers``; add :class:`ExcitationCallback` under AMP.
Motivation: subclass :class:`MotivationModule` (docs/integrations/lightning.md, "Motivation under Lightning").

Lightning needs nothing else for Excitation to work: under automatic optimisation it calls
``optimizer.step(closure)``, which :class:`~seeking.Excitation` supports (the closure runs the forward,
whose counts the step then reads), and with ``accumulate_grad_batches`` the forwards of the other
micro-batches run before, so their counts add up. A checkpoint holds the optimizer's state dict, and
with it Excitation's settings and generator.

What Lightning does not say is when its ``GradScaler`` (``precision="16-mixed"``) skipped a step for a
non-finite gradient: the optimizer's ``step`` is then not called, and the counts of the skipped batch
would be added to the next one's. :class:`ExcitationCallback` discards them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..excitation import Excitation
from ..motivation import Motivator
from . import require
from ._skips import SkipGuard

L = require("lightning.pytorch", "lightning")


class ExcitationCallback(L.Callback):
    """Discards the counts of every optimizer step that Lightning meant to take but did not (an AMP skip).

    It watches each :class:`~seeking.Excitation` that ``configure_optimizers`` returned, and each one
    that the LightningModule holds as an attribute (``self.excitation = Excitation.attach(optimizer,
    self.model)``, for an optimizer kept as is). ``skipped`` counts the skipped steps of the current
    ``fit``. Raises ``ConfigError`` at the start of ``fit`` when it finds no Excitation.
    """

    def __init__(self) -> None:
        self._guards: list[SkipGuard] = []

    @property
    def skipped(self) -> int:
        return sum(guard.skipped for guard in self._guards)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        found = [*trainer.optimizers, *vars(pl_module).values()]
        excitations = list({id(e): e for e in found if isinstance(e, Excitation)}.values())
        if not excitations:
            raise ConfigError(
                "ExcitationCallback found no Excitation: return Excitation(optimizer, model) from "
                "configure_optimizers, or keep the one of Excitation.attach as an attribute of the LightningModule"
            )
        self._guards = [SkipGuard(excitation) for excitation in excitations]

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        for guard in self._guards:
            if optimizer is guard.excitation or optimizer is guard.excitation.optimizer:
                guard.due()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        for guard in self._guards:
            guard.settle()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for guard in self._guards:
            guard.remove()


MOTIVATOR_KEY = "seeking_motivator"  # where a checkpoint holds the Motivator's state


class MotivationModule(L.LightningModule):
    """A LightningModule that trains a pair with a :class:`~seeking.Motivator`: each batch trains the
    model the Motivator selects (manual optimisation), and Lightning's checkpoints carry its state.

    A subclass holds both models as attributes and defines two methods:

    - ``configure_motivator(state)``: builds the optimizers and returns
      ``Motivator(..., state=state)``. Lightning calls it from ``configure_optimizers``, after it has
      restored a checkpoint's weights: ``state`` is then the Motivator's saved state, and the
      Motivator leaves the restored tensors as they are (``None`` starts a run).
    - ``training_loss(model, batch)``: the loss of ``batch`` for ``model`` (a scalar tensor).

    Under DDP use ``DDPStrategy(find_unused_parameters=True)`` (each step leaves the idle model's
    parameters without gradient); the Motivator averages the loss over the processes, so every
    process trains the same model. The checkpoint holds the Motivator's state under
    ``"seeking_motivator"``, both optimizers' states (``motivator.optimizer``) and the weights.
    At the end of ``fit`` both models hold the latest shared weights (:meth:`Motivator.finish`).

    Raises ``ConfigError``: under a strategy that restores checkpoints after ``configure_optimizers``
    (FSDP, DeepSpeed, model parallel: the Motivator would start from unrestored weights), under DDP
    without ``find_unused_parameters=True``, and on resuming from a checkpoint without a Motivator state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False  # the Motivator, not Lightning, chooses which model steps
        self.motivator: Motivator | None = None
        self._restored: dict[str, Any] | None = None  # a checkpoint's Motivator state, until used

    def configure_motivator(self, state: dict[str, Any] | None) -> Motivator:
        """The Motivator of the pair, built with ``state=state`` over new optimizers."""
        raise NotImplementedError("a MotivationModule defines configure_motivator(state)")

    def training_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``batch`` for ``model`` (the base or the motivated model)."""
        raise NotImplementedError("a MotivationModule defines training_loss(model, batch)")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.trainer.strategy.restore_checkpoint_after_setup:
            raise ConfigError(
                f"{type(self.trainer.strategy).__name__} restores checkpoints after configure_optimizers, so the "
                "Motivator would initialise weights that are not yet restored; MotivationModule supports the "
                "single-device and DDP strategies"
            )
        # a checkpoint's state, or the state of an earlier fit of this module: either way no re-initialisation
        state = self._restored
        if state is None and self.motivator is not None:
            state = self.motivator.state_dict()
        self.motivator, self._restored = self.configure_motivator(state), None
        return self.motivator.optimizer

    def on_fit_start(self) -> None:
        ddp = self.trainer.strategy.model
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not ddp.find_unused_parameters:
            raise ConfigError(
                "DDP without find_unused_parameters: each Motivation step leaves the idle model without "
                "gradients; use strategy=DDPStrategy(find_unused_parameters=True) "
                "(or strategy='ddp_find_unused_parameters_true')"
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        model, _ = self.motivator.select()
        optimizer = self.optimizers()  # motivator.optimizer, wrapped: steps the selected model's optimizer
        loss = self.training_loss(model, batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.motivator.observe(loss)
        return loss.detach()

    def on_train_end(self) -> None:
        self.motivator.finish()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MOTIVATOR_KEY] = self.motivator.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if MOTIVATOR_KEY not in checkpoint:
            raise ConfigError(
                f"the checkpoint holds no {MOTIVATOR_KEY!r}: it was not saved from a MotivationModule, so the "
                "Motivator's condition and counters cannot resume"
            )
        self._restored = checkpoint[MOTIVATOR_KEY]
