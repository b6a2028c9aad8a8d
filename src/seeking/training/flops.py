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
