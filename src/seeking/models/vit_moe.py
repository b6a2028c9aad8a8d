"""ViT-MoE for small images: a Vision Transformer whose MLPs are top-k routed mixtures of experts.

Non-overlapping ``patch_size`` patches are embedded by a strided convolution, a learned position
embedding is added (and a class token prepended when ``pool="cls"``), then ``depth`` pre-norm
:class:`~seeking.moe.MoEBlock` s, a final LayerNorm, the class token's features (or the mean over
patches with ``pool="mean"``) and a linear head. Every block's :class:`~seeking.moe.MoEFeedForward`
has ``num_experts`` experts of hidden size ``mlp_ratio * width``, top-k routing and by default the
load-balancing loss with coefficient 0.01 (add :func:`seeking.moe.moe_aux_loss` to the loss).
The defaults are ``vit_moe_tiny``: 4 blocks, width 128, 4 heads, 64 experts, top-2, 4x4 patches
of 32x32 images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..moe.block import moe_blocks
from .registry import register_model


class ViTMoE(nn.Module):
    def __init__(
        self,
        depth: int = 4,
        width: int = 128,
        heads: int = 4,
        num_experts: int = 64,
        top_k: int = 2,
        mlp_ratio: int = 4,
        patch_size: int = 4,
        pool: str = "cls",
        storage: str = "stacked",
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | tuple[int, int] = 32,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(depth, width, heads, mlp_ratio, patch_size, num_classes, in_channels) < 1:
            raise ConfigError("depth, width, heads, mlp_ratio, patch_size, num_classes, in_channels must be positive")
        if h % patch_size or w % patch_size or min(h, w) < 1:
            raise ConfigError(f"image size {h}x{w} must be a positive multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ConfigError(f"pool must be 'cls' or 'mean', got {pool!r}")
        num_patches = (h // patch_size) * (w // patch_size)
        self.cfg = {
            "family": "vit_moe",
            "depth": depth,
            "width": width,
            "heads": heads,
            "num_experts": num_experts,
            "top_k": top_k,
            "hidden": mlp_ratio * width,
            "patch_size": patch_size,
            "pool": pool,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": [h, w],
        }
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + (pool == "cls"), width) * 0.02)
        self.blocks = moe_blocks(
            depth,
            width,
            heads,
            mlp_ratio * width,
            num_experts,
            causal=False,
            top_k=top_k,
            storage=storage,
            aux_loss_coef=aux_loss_coef,
            z_loss_coef=z_loss_coef,
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.cls_token is not None else x.mean(1))


@register_model
def vit_moe_tiny(**kwargs) -> ViTMoE:
    return ViTMoE(**kwargs)
