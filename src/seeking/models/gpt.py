"""GPT: a dense decoder-only transformer (nanoGPT-like), in depth and width variants for Motivation.

Token and learned position embeddings, ``depth`` causal pre-norm blocks (``x + attn(ln1(x))``, then
``x + mlp(ln2(x))``), a final LayerNorm and a head tied to the token embedding.
``forward(idx, mask=None)`` maps token ids (B, T), ``T <= block_size``, to logits (B, T, vocab_size);
``mask`` is accepted for the language-model interface and ignored (attention is causal, which is
right for padding at the end of a sequence). :func:`~seeking.models.gpt_moe.lm_loss` is the loss.

Each block's residual branches end in ``attn.proj`` and ``mlp.fc2`` (``nn.Linear``), the names by
which :func:`seeking.motivation.weights_map.make_identity` zeroes the blocks a deeper model adds, so
``gpt_4l`` inside ``gpt_8l`` starts as exactly ``gpt_4l``'s function. The attention module has
``qkv`` and ``num_heads``, so width growth maps its projections head by head.

Variants (:func:`register_model`): ``gpt_2l``, ``gpt_4l``, ``gpt_8l``, ``gpt_12l`` (width 64, 4 heads of 16)
and ``gpt_4l_w128`` (width 128, 8 heads of 16: the 4-layer model twice as wide). Training FLOPs per
token in closed form: :func:`seeking.flops.gpt_train_flops_per_token`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..moe.block import SelfAttention
from .registry import register_model


class CausalSelfAttention(SelfAttention):
    """The project's multi-head attention, causal, with ``num_heads`` for the weights map's per-head view."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads, causal=True)
        self.num_heads = heads


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))``, ``hidden`` features wide."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm causal transformer block."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CausalLM(nn.Module):
    """What this project's language models share (GPT, GPT-MoE): the size checks and ``cfg``, token
    and learned position embeddings (normal, std 0.02), the blocks that ``make_blocks()`` builds
    (called between the two, so the random initialisation keeps its order), a final LayerNorm and a
    head tied to the token embedding. ``extra`` goes into ``cfg`` too (a family's own sizes). Each
    block is called as ``block(x, mask)``. ``forward(idx (B, T), mask=None)`` -> logits
    (B, T, vocab_size). ``ConfigError`` for a size < 1, or if ``T > block_size``."""

    def __init__(
        self,
        family: str,
        make_blocks: Callable[[], nn.ModuleList],
        *,
        vocab_size: int,
        block_size: int,
        depth: int,
        width: int,
        heads: int,
        mlp_ratio: int,
        **extra: Any,
    ) -> None:
        if min(vocab_size, block_size, depth, width, heads, mlp_ratio) < 1:
            raise ConfigError("vocab_size, block_size, depth, width, heads and mlp_ratio must be positive")
        super().__init__()
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "depth": depth, "width": width, "heads": heads}
        self.cfg = {"family": family, **sizes, **extra, "hidden": mlp_ratio * width}
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Embedding(block_size, width)
        for embed in (self.tok_embed, self.pos_embed):
            nn.init.normal_(embed.weight, std=0.02)
        self.blocks = make_blocks()
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.tok_embed.weight

    def forward(self, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        t = idx.shape[1]
        if t > self.cfg["block_size"]:
            raise ConfigError(f"sequence length {t} exceeds block_size {self.cfg['block_size']}")
        x = self.tok_embed(idx) + self.pos_embed(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


class GPT(CausalLM):
    """See the module docstring. Raises ``ConfigError`` for a non-positive size or ``width`` not a
    multiple of ``heads``."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        depth: int = 4,
        width: int = 64,
        heads: int = 4,
        mlp_ratio: int = 4,
    ) -> None:
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "depth": depth, "width": width, "heads": heads}
        super().__init__(
            "gpt",
            lambda: nn.ModuleList(Block(width, heads, mlp_ratio * width) for _ in range(depth)),
            **sizes,
            mlp_ratio=mlp_ratio,
        )


@register_model
def gpt_2l(**kwargs) -> GPT:
    return GPT(**{"depth": 2, **kwargs})


@register_model
def gpt_4l(**kwargs) -> GPT:
    return GPT(**{"depth": 4, **kwargs})


@register_model
def gpt_8l(**kwargs) -> GPT:
    return GPT(**{"depth": 8, **kwargs})


@register_model
def gpt_12l(**kwargs) -> GPT:
    return GPT(**{"depth": 12, **kwargs})


@register_model
def gpt_4l_w128(**kwargs) -> GPT:
    return GPT(**{"depth": 4, "width": 128, "heads": 8, **kwargs})
