"""A tiny MoE classifier for the trainer-integration tests, and an independent record of its routing."""

import torch
import torch.nn.functional as F
from torch import nn

from seeking.moe import MoEFeedForward

DIM, EXPERTS, CLASSES = 8, 4, 3


class ToyMoE(nn.Module):
    """Linear -> LayerNorm -> residual MoE -> Linear; ``forward(x, y)`` returns ``{"loss", "logits"}``.

    ``routed`` holds, for every training forward (autograd on), the expert counts read from the
    router's own output (``torch.bincount`` of its indices): a count that does not go through the
    layer's ``record``. ``poison_at``: the index of a training forward whose loss is made infinite.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(4, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.moe = MoEFeedForward(DIM, 16, EXPERTS, top_k=2)
        self.head = nn.Linear(DIM, CLASSES)
        self.routed: list[torch.Tensor] = []
        self.poison_at: int | None = None
        self.moe.router.register_forward_hook(self._count)

    def _count(self, module, args, routing) -> None:
        if self.training and torch.is_grad_enabled():
            self.routed.append(torch.bincount(routing.indices.flatten(), minlength=EXPERTS).float())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.embed(x))
        logits = self.head(h + self.moe(h))
        loss = F.cross_entropy(logits, y)
        if self.training and torch.is_grad_enabled() and len(self.routed) - 1 == self.poison_at:
            loss = loss * float("inf")  # every gradient non-finite: a GradScaler skips this step
        return {"loss": loss, "logits": logits}


def examples(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]
