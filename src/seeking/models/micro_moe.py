"""Micro-MoE: a k-winners-take-all MLP in which every hidden neuron is an expert.

The flattened image goes through ``depth`` hidden layers ``Linear -> ReLU -> keep the top K``: per
example only the ``K = max(1, round(width * (1 - sparsity)))`` largest activations survive, the
others are zeroed; then a linear classifier. There are no skip connections (``sparse_mlp_deep10``
and ``sparse_mlp_deep20`` are the deep variants). Routing is the top-K choice: each hidden layer
is an :class:`~seeking.moe.ExpertLayer` with ``num_experts = width``, counting per neuron the
examples that kept it (so a layer's counts add up to ``batch * K``; a kept activation can be 0 when
fewer than K are positive), and its expert parameters are the linear weight (width, in) and bias
(width,), stacked along dimension 0. Since the activations are the routing scores, a hidden layer
computes in float32 even under autocast (see :func:`~seeking.moe.router.float32_linear`): bfloat16
would change the kept neurons of a few percent of examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..moe.layer import RoutedLayer
from ..moe.router import float32_linear
from .registry import register_model


class TopKLinear(RoutedLayer):
    """``Linear(in_features, width)``, ReLU, then only each row's ``k`` largest activations kept."""

    def __init__(self, in_features: int, width: int, k: int) -> None:
        super().__init__(width)
        self.linear = nn.Linear(in_features, width)
        self.k = k

    def expert_parameters(self) -> Iterator[tuple[nn.Parameter, int | None]]:
        yield self.linear.weight, None
        yield self.linear.bias, None

    def forward(self, x: Tensor) -> Tensor:
        values, indices = torch.relu(float32_linear(x, self.linear.weight, self.linear.bias)).topk(self.k, dim=-1)
        self.record(indices)
        return values.new_zeros(x.shape[0], self.num_experts).scatter(1, indices, values)


class MicroMoE(nn.Module):
    def __init__(
        self,
        depth: int = 4,
        width: int = 128,
        sparsity: float = 0.9,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | tuple[int, int] = 32,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(depth, width, num_classes, in_channels, h, w) < 1:
            raise ConfigError("depth, width, num_classes, in_channels and image_size must be positive")
        if not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity must lie in [0, 1), got {sparsity}")
        k = max(1, round(width * (1 - sparsity)))
        self.cfg = {
            "family": "micro_moe",
            "depth": depth,
            "width": width,
            "sparsity": sparsity,
            "k": k,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": [h, w],
        }
        sizes = [in_channels * h * w] + [width] * depth
        self.layers = nn.ModuleList(TopKLinear(a, b, k) for a, b in pairwise(sizes))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


@register_model
def micro_moe(**kwargs) -> MicroMoE:
    return MicroMoE(**kwargs)


@register_model
def sparse_mlp_deep10(**kwargs) -> MicroMoE:
    return MicroMoE(depth=10, **kwargs)


@register_model
def sparse_mlp_deep20(**kwargs) -> MicroMoE:
    return MicroMoE(depth=20, **kwargs)
