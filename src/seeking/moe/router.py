"""Token-choice top-k routing with the Switch/GShard load-balancing loss and the ST-MoE router z-loss.

Scores are ``softmax(gate(x))``, the gate's matmul and the softmax both in float32 whatever the
autocast state (:func:`float32_linear`): in bfloat16 about 2% of random tokens would pick other
experts (64 experts, top-2, width 256), changing the counts, the auxiliary losses and Excitation's
factors. Each token picks its ``top_k`` highest-scoring experts
(the hard assignment that the counts and the dispatch use); its weights are those experts' scores,
renormalised to sum to 1 when ``renormalize`` is set (with ``top_k=1`` that makes every weight 1,
so the gate then learns only from the auxiliary losses). Padding tokens (``valid`` False) are left
out of both losses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class Routing(NamedTuple):
    indices: Tensor  # (T, k) int64: each token's experts, highest score first
    weights: Tensor  # (T, k): the weight of each of those experts' outputs
    probs: Tensor  # (T, E) float32: the softmax scores over all experts
    aux_loss: Tensor  # scalar: the coefficient-weighted auxiliary losses (0 when both are off)


def float32_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` computed and returned in float32 even inside ``torch.autocast``.

    For routing decisions (a gate, a top-k of activations), which low precision would change;
    gradients flow back to ``x``, ``weight`` and ``bias`` in their own dtypes.
    """
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def _valid_weights(n: int, valid: Tensor | None, device: torch.device) -> Tensor:
    return torch.ones(n, device=device) if valid is None else valid.float()


def load_balancing_loss(probs: Tensor, indices: Tensor, valid: Tensor | None = None) -> Tensor:
    """``E * sum_k f_k * P_k`` over valid tokens; 1 when routing is uniform, E when one expert takes all.

    ``f_k`` is the fraction of the ``T * top_k`` hard assignments that went to expert ``k`` (no
    gradient), ``P_k`` the mean score of expert ``k`` (the gradient path).
    """
    num_tokens, num_experts = probs.shape
    top_k = indices.shape[1]
    w = _valid_weights(num_tokens, valid, probs.device)
    n = w.sum().clamp_min(1)
    f = torch.zeros(num_experts, device=probs.device).index_add_(0, indices.flatten(), w.repeat_interleave(top_k))
    p = (probs * w[:, None]).sum(0)
    return num_experts * (f * p).sum() / (n * n * top_k)


def router_z_loss(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """``mean(logsumexp(logits)^2)`` over valid tokens: keeps the gate logits small (ST-MoE)."""
    w = _valid_weights(logits.shape[0], valid, logits.device)
    return (torch.logsumexp(logits, -1).square() * w).sum() / w.sum().clamp_min(1)


class TopKRouter(nn.Module):
    """A bias-free linear gate ``dim -> num_experts`` and top-k selection; ``forward(x (T, dim))``."""

    def __init__(
        self,
        dim: int,
        num_experts: int,
        top_k: int,
        *,
        renormalize: bool = True,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"top_k must lie in 1..num_experts={num_experts}, got {top_k}")
        if aux_loss_coef < 0 or z_loss_coef < 0:
            raise ConfigError("aux_loss_coef and z_loss_coef must be 0 (off) or positive")
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Routing:
        logits = float32_linear(x, self.gate.weight)
        probs = logits.softmax(-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        aux_loss = logits.new_zeros(())
        if self.aux_loss_coef:
            aux_loss = aux_loss + self.aux_loss_coef * load_balancing_loss(probs, indices, valid)
        if self.z_loss_coef:
            aux_loss = aux_loss + self.z_loss_coef * router_z_loss(logits, valid)
        return Routing(indices, weights, probs, aux_loss)
