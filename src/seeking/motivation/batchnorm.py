"""Re-estimating BatchNorm running statistics from training batches, and the deployable copy of a model.

A model whose shared weights were last trained inside the other model carries running statistics
measured on older weights; re-estimating them on a few training batches before evaluation makes
its test figures describe its current weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError


def _tracked_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm layer's running statistics and re-estimate them as the plain average
    over ``inputs`` (forward passes in train mode, no gradients). Weights are not changed; the
    model's mode and each layer's momentum are restored. Returns the number of batches used; a
    model without BatchNorm running statistics is left alone (no forward pass, returns 0).

    Raises :class:`~seeking.errors.ConfigError` if the model has BatchNorm statistics and
    ``inputs`` yields no batch (an exhausted iterator), which would leave them reset, not estimated.
    """
    norms = _tracked_norms(model)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    used = 0
    try:
        for x in inputs:
            model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if not used:
        raise ConfigError(
            "no calibration batch to re-estimate the BatchNorm statistics from; "
            "pass a list of batches (an iterator is used up by the first model)"
        )
    return used


@torch.no_grad()
def deployable_copy(model: nn.Module, calibration: Iterable[torch.Tensor] | None) -> nn.Module:
    """A copy of ``model`` that owns all its tensors, ready to evaluate and save; ``model`` itself is
    not changed, so testing during training does not alter training.

    Owning its tensors matters under zero-copy sharing (``sync="share"``): a base whose tensors are
    views of the motivated model's would otherwise change when the motivated model is re-estimated
    or trained further. With ``calibration`` (input batches as training sees them: augmented and
    normalized), the copy's BatchNorm statistics are re-estimated on them
    (:func:`recalibrate_batchnorm`); ``None`` keeps the running statistics as they are. Gradients
    are not copied.
    """
    # The memo hands deepcopy a compact copy of each tensor: copying a view would copy its whole
    # storage (the motivated model's tensor), and the gradients are not wanted.
    memo: dict[int, object] = {id(b): b.clone() for b in model.buffers()}
    memo.update({id(p): nn.Parameter(p.detach().clone(), p.requires_grad) for p in model.parameters()})
    clone = copy.deepcopy(model, memo)
    if calibration is not None:
        recalibrate_batchnorm(clone, calibration)
    return clone
