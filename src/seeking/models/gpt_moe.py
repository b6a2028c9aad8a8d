"""GPT-MoE: a character-level decoder-only transformer (nanoGPT-like) with MoE feed-forward layers.

Token and learned position embeddings, ``depth`` causal pre-norm :class:`~seeking.moe.MoEBlock` s,
a final LayerNorm and a head tied to the token embedding. ``forward(idx, mask=None)`` maps token
ids (B, T), ``T <= block_size``, to logits (B, T, vocab_size); :func:`lm_loss` is the next-token
cross-entropy. ``mask`` (B, T) bool marks real tokens for the MoE layers (counts, aux losses,
outputs); attention ignores it, which is right for padding at the end of a causal sequence. The
load-balancing loss is on by default (coefficient 0.01; add :func:`seeking.moe.moe_aux_loss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..moe.block import moe_blocks
from .gpt import CausalLM
from .registry import register_model


class GPTMoE(CausalLM):
    def __init__(
        self,
        vocab_size: int,
        block_size: int = 128,
        depth: int = 4,
        width: int = 128,
        heads: int = 4,
        num_experts: int = 8,
        top_k: int = 2,
        mlp_ratio: int = 4,
        storage: str = "stacked",
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
    ) -> None:
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "depth": depth, "width": width, "heads": heads}
        moe = {"top_k": top_k, "storage": storage, "aux_loss_coef": aux_loss_coef, "z_loss_coef": z_loss_coef}
        super().__init__(
            "gpt_moe",
            lambda: moe_blocks(depth, width, heads, mlp_ratio * width, num_experts, causal=True, **moe),
            **sizes,
            mlp_ratio=mlp_ratio,
            num_experts=num_experts,
            top_k=top_k,
        )


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T); targets -100 are ignored."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@register_model
def gpt_moe_tiny(**kwargs) -> GPTMoE:
    return GPTMoE(**kwargs)


@register_model
def gpt_moe_2l(**kwargs) -> GPTMoE:
    """GPT-MoE with 2 blocks of width 64 (4 heads, 8 experts, top-2): the base of a motivated MoE pair."""
    return GPTMoE(**{"depth": 2, "width": 64, **kwargs})


@register_model
def gpt_moe_4l(**kwargs) -> GPTMoE:
    """:func:`gpt_moe_2l` with 4 blocks: its two added blocks start as the identity in a motivated pair."""
    return GPTMoE(**{"depth": 4, "width": 64, **kwargs})


@register_model
def gpt_moe_small(**kwargs) -> GPTMoE:
    return GPTMoE(**{"block_size": 256, "depth": 6, "width": 256, "heads": 8, "num_experts": 16, **kwargs})
