"""Excitation under Hugging Face's ``Trainer``: one line after building the trainer.

    from seeking.integrations.hf_trainer import excite_trainer

    trainer = Trainer(model=model, args=args, train_dataset=train)
    excite_trainer(trainer, strategy="zero_sum")
    trainer.train()

:func:`excite_trainer` wraps the trainer's own ``create_optimizer`` (so the optimizer is exactly the one
Trainer builds: ``args.optim``, its learning rate, betas, epsilon and weight decay, and its weight-decay
groups from ``get_decay_parameter_names``; or the one given as ``optimizers=`` or
``optimizer_cls_and_kwargs=``; or a subclass's own ``create_optimizer``) and attaches Excitation to that
optimizer as hooks (:meth:`seeking.Excitation.attach`), so Trainer, Accelerate and the LR scheduler keep
their optimizer object. The callback it adds discards the counts of a step that Accelerate's
``GradScaler`` skipped (:class:`~seeking.integrations._skips.SkipGuard`) and adds the routing metrics and
the last factors to every log. The Excitation's settings and generator travel in the optimizer's state
dict, so Trainer's checkpoints resume it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, SeekingWarning
from ..excitation import Excitation, get_strategy
from ..moe import MeteredLayer, keep_counts_local, layer_utilization, routing_metrics
from . import require
from ._skips import SkipGuard

transformers = require("transformers", "transformers")


class ExcitationCallback(transformers.TrainerCallback):
    """Added by :func:`excite_trainer`; holds the :class:`~seeking.Excitation` (``excitation``, None until
    Trainer builds its optimizer) and adds to each log:

    - ``routing/<name>`` and ``routing/layer{i}/<name>``: :func:`seeking.moe.routing_metrics` of the
      latest forward (when every MoE layer has ``last_counts``; a warning says so otherwise);
    - ``excitation/layer{i}/factor_min`` and ``factor_max``: the last step's factors of layer ``i``
      (Excitation's layer order); with ``per_expert``, also ``excitation/layer{i}/factor{k}`` and
      ``routing/layer{i}/utilization{k}`` (the expert's count over the fair share, latest forward);
    - ``excitation/skipped_steps``: the optimizer steps skipped so far in this ``train()`` call, whose
      counts were discarded.
    """

    def __init__(self, strategy: str = "zero_sum", *, per_expert: bool = False, **options: Any) -> None:
        self.strategy = strategy
        self.per_expert = per_expert
        self.options = options
        self.excitation: Excitation | None = None
        self._guard: SkipGuard | None = None
        self._metered = False

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Attach Excitation to ``optimizer`` over ``model``'s MoE layers (once per optimizer: a new
        optimizer, as after ``model_init``, replaces the old attachment)."""
        if self.excitation is not None:
            if self.excitation.optimizer is optimizer:
                return
            self._guard.remove()
            self.excitation.detach()
        self.excitation = Excitation.attach(optimizer, model, self.strategy, **self.options)
        self._guard = SkipGuard(self.excitation)
        self._metered = all(isinstance(layer, MeteredLayer) for layer in self.excitation.layers)
        if not self._metered:
            warnings.warn(
                "the routing metrics are not logged: an MoE layer has no last_counts (seeking.moe.protocol); "
                "Excitation's factors still are",
                SeekingWarning,
                stacklevel=2,
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        # Trainer builds its optimizer elsewhere under DeepSpeed; Excitation would then silently be absent.
        if self.excitation is None or not _wraps(optimizer, self.excitation.optimizer):
            raise ConfigError(
                "excite_trainer: Trainer's optimizer was not built by its create_optimizer (DeepSpeed builds its "
                "own), so Excitation is not on it: build the optimizer yourself, pass optimizers=(optimizer, "
                "scheduler) to Trainer, and call excite_trainer on that trainer"
            )
        self._guard.skipped = 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard.due()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard.settle()

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.excitation is None or logs is None:
            return
        metrics = self.metrics(model)
        logs.update(metrics)
        # Trainer appended a copy of the logs to log_history before calling the callbacks
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def metrics(self, model: nn.Module | None) -> dict[str, float]:
        """The values this callback adds to a log (see the class docstring)."""
        out: dict[str, float] = {}
        if self._metered and model is not None:
            out.update({f"routing/{name}": value for name, value in routing_metrics(model).items()})
            if self.per_expert:
                for i, shares in enumerate(layer_utilization(model)):
                    out.update({f"routing/layer{i}/utilization{k}": u for k, u in enumerate(shares)})
        for i, phi in enumerate(self.excitation.last_factors):
            out[f"excitation/layer{i}/factor_min"] = float(phi.min())
            out[f"excitation/layer{i}/factor_max"] = float(phi.max())
            if self.per_expert:
                out.update({f"excitation/layer{i}/factor{k}": f for k, f in enumerate(phi.tolist())})
        out["excitation/skipped_steps"] = float(self._guard.skipped)
        return out


def excite_trainer(
    trainer: Any, strategy: str = "zero_sum", *, per_expert: bool = False, **options: Any
) -> ExcitationCallback:
    """Make ``trainer`` (a ``transformers.Trainer`` or subclass, before ``train()``) step with Excitation.

    Args:
        trainer: the trainer; its optimizer is the one it builds (or was given), unchanged.
        strategy: an Excitation strategy (:func:`seeking.excitation.list_strategies`).
        per_expert: also log every expert's factor and utilization (see :class:`ExcitationCallback`).
        **options: passed on to :meth:`seeking.Excitation.attach` (``gamma``, ``seed``, ``include``,
            ``process_group``).

    Returns the callback, whose ``excitation`` is the Excitation once training has started.
    Raises ``ConfigError`` for an unknown strategy or a trainer already excited; at ``train()``, for a
    model without MoE layers (:mod:`seeking.moe.protocol`) or an optimizer built elsewhere (DeepSpeed).
    """
    get_strategy(strategy)
    if any(isinstance(cb, ExcitationCallback) for cb in trainer.callback_handler.callbacks):
        raise ConfigError("excite_trainer was already called on this trainer: call it once")
    callback = ExcitationCallback(strategy, per_expert=per_expert, **options)
    # Accelerate wraps the model in DDP at train() on several processes: its buffer broadcast must not
    # overwrite the other processes' counts (the model is still unwrapped here)
    keep_counts_local(trainer.model)
    build = trainer.create_optimizer

    def create_optimizer(model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = build(model)
        callback.attach(optimizer, trainer.model if model is None else model)
        return optimizer

    # An instance attribute, so that a subclass's own create_optimizer (TRL's, the user's) is the one wrapped.
    trainer.create_optimizer = create_optimizer
    # First, so that the loggers' callbacks (TensorBoard, W&B...) see the metrics it adds to the logs.
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def _wraps(optimizer: Any, target: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is ``target`` or a wrapper of it (Accelerate's ``AcceleratedOptimizer``...)."""
    while optimizer is not None:
        if optimizer is target:
            return True
        optimizer = getattr(optimizer, "optimizer", None)
    return False
