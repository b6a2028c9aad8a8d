"""Re-estimating BatchNorm running statistics from training batches.

A model whose shared weights were last trained inside the other model carries running statistics
measured on older weights; re-estimating them on a few training batches before evaluation makes
its test figures describe its current weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm layer's running statistics and re-estimate them as the plain average
    over ``inputs`` (forward passes in train mode, no gradients). Weights are not changed; the
    model's mode and each layer's momentum are restored. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    used = 0
    for x in inputs:
        model(x)
        used += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return used
