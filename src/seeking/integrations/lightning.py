"""Excitation under Lightning: return it from ``configure_optimizers``; add this callback under AMP.

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
