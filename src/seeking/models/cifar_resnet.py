"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of n basic blocks.

Widths 16, 32, 64 (times ``width``), identity shortcuts with zero padding where the shape changes
(the paper's option A), global average pooling, so any input size and channel count works.
``norm="group"`` puts GroupNorm (8 groups) in place of every BatchNorm.
Every model carries a ``cfg`` dict (family, depth, blocks per stage, widths) that the weights map
and checkpoints use instead of guessing from module names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import register_model

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with 8 groups: the same function whatever the batch is split into
    (several processes on CPU, where SyncBatchNorm does not run)."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(8, channels)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, out_channels)
        self.stride = stride
        self.pad_channels = out_channels - in_channels

    def zero_init_last(self) -> None:
        """Make the residual branch output zero, so the block computes the identity (after ReLU)."""
        nn.init.zeros_(self.bn2.weight)
        nn.init.zeros_(self.bn2.bias)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, ``stages[s]`` = ``nn.Sequential`` of blocks, pooling, linear head."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 1,
        zero_init_residual: bool = False,
        image_size: tuple[int, int] | list[int] | None = None,
        norm: str = "batch",
    ) -> None:
        # image_size is recorded only: global pooling makes the network accept any input size.
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise ConfigError("num_classes, in_channels and width must be positive integers")
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.cfg = {
            "family": "cifar_resnet",
            "depth": depth,
            "blocks": [n, n, n],
            "widths": widths,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "width": width,
            "image_size": image_size,
            "norm": norm,
        }
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, widths[0])
        stages, channels = [], widths[0]
        for s, out_channels in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, norm))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    m.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model
def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


@register_model
def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


@register_model
def resnet44(**kwargs) -> CifarResNet:
    return CifarResNet(depth=44, **kwargs)


@register_model
def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)


@register_model
def resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, **kwargs)
