"""A pre-norm transformer block whose feed-forward is a :class:`MoEFeedForward`: shared by ViT-MoE and GPT-MoE."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layer import MoEFeedForward


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``; causal when asked."""

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MoEBlock(nn.Module):
    """``x + attn(ln(x))``, then ``x + moe(ln(x))``; ``mask`` (B, T) bool only reaches the MoE layer."""

    def __init__(self, width: int, heads: int, hidden: int, num_experts: int, top_k: int, causal: bool, **moe) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln2 = nn.LayerNorm(width)
        self.moe = MoEFeedForward(width, hidden, num_experts, top_k, **moe)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.moe(self.ln2(x), mask)


def moe_blocks(
    depth: int, width: int, heads: int, hidden: int, num_experts: int, top_k: int, causal: bool, **moe
) -> nn.ModuleList:
    """``depth`` :class:`MoEBlock` s alike; ``moe`` goes to each :class:`MoEFeedForward` (``storage``...)."""
    return nn.ModuleList(MoEBlock(width, heads, hidden, num_experts, top_k, causal, **moe) for _ in range(depth))
