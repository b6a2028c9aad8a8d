"""Training FLOPs, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real model and
batch shape. Convention (PyTorch's): 2 FLOPs per multiply-add; forward and backward of the loss;
the optimizer update and evaluation are not counted."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def train_step_flops(model: nn.Module, inputs: torch.Tensor, num_classes: int) -> int:
    """FLOPs of one forward and backward pass of ``model`` on a batch shaped like ``inputs``.

    Runs on a deep copy, so the model's weights, gradients and statistics are left alone.
    """
    clone = copy.deepcopy(model).train()
    x = torch.zeros_like(inputs)
    y = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(clone(x), y.clamp_max(num_classes - 1)).backward()
    return counter.get_total_flops()


class FlopsMeter:
    """Accumulates training FLOPs per model; counts each (model, batch shape) once."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.per_step: dict[tuple[str, tuple[int, ...]], int] = {}
        self.total: dict[str, int] = {}

    def add_step(self, name: str, model: nn.Module, inputs: torch.Tensor) -> None:
        key = (name, tuple(inputs.shape))
        if key not in self.per_step:
            self.per_step[key] = train_step_flops(model, inputs, self.num_classes)
        self.total[name] = self.total.get(name, 0) + self.per_step[key]

    @property
    def grand_total(self) -> int:
        return sum(self.total.values())
