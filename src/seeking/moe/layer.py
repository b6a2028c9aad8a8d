"""``MoEFeedForward``: a top-k routed mixture of two-layer GELU MLPs that implements :class:`ExpertLayer`.

Experts are stored either ``"stacked"`` (parameters ``w1`` (E, dim, hidden) and ``w2`` (E, hidden,
dim), dimension 0 = expert) or as a ``"list"`` (``experts``: an ``nn.ModuleList`` of
``Linear(dim, hidden) -> GELU -> Linear(hidden, dim)``, bias-free). Both compute the same function:
copying ``w1[k].T`` and ``w2[k].T`` into expert ``k``'s two ``Linear`` weights gives equal outputs.

``forward(x, mask=None)`` takes ``x`` (..., dim) and an optional bool ``mask`` shaped ``x.shape[:-1]``
(True = a real token). Masked tokens are not counted, take no part in the auxiliary losses, and
their output is zero, so behind a residual connection they pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .dispatch import Grouped, each_expert, grouped_mlp, run_experts
from .router import TopKRouter

STORAGES = ("stacked", "list")


class RoutedLayer(nn.Module):
    """The counting half of :class:`ExpertLayer` plus a record of the last forward for the metrics.

    ``expert_counts`` (float32 (E,)) grows only in training with autograd on, and is zeroed by the
    optimizer wrapper; ``last_counts`` (E,) and ``last_indices`` (token shape..., k; -1 for padding)
    describe the latest forward in any mode and are what :mod:`seeking.moe.metrics` reads.
    Subclasses call :meth:`record` in ``forward`` and define ``expert_parameters``.
    """

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        if num_experts < 1:
            raise ConfigError(f"num_experts must be a positive integer, got {num_experts}")
        self.num_experts = num_experts
        self.register_buffer("expert_counts", torch.zeros(num_experts), persistent=False)
        self.register_buffer("last_counts", torch.zeros(num_experts), persistent=False)
        self.last_indices: Tensor | None = None
        self._owed = 0  # forwards in training without autograd since the last counted one (see counting)

    def record(self, indices: Tensor, valid: Tensor | None = None) -> None:
        """Count one forward's hard assignments ``indices`` (..., k); ``valid`` (...) bool marks real tokens."""
        indices = indices.detach()
        if valid is not None:
            indices = indices.masked_fill(~valid[..., None], -1)
        counts = torch.zeros_like(self.last_counts).index_add_(
            0, indices.clamp_min(0).flatten(), (indices >= 0).flatten().to(self.last_counts.dtype)
        )
        self.last_counts.copy_(counts)
        self.last_indices = indices
        if self.counting():
            self.expert_counts += counts

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> RoutedLayer:
        from_meta = self.expert_counts.is_meta
        super()._apply(fn, recurse)
        for name in ("expert_counts", "last_counts"):
            # counts are exact integers only in float32: undo a cast of the model to half precision;
            # counts materialised from the meta device (to_empty) start at zero, not at uninitialised memory
            counts = getattr(self, name).float()
            setattr(self, name, counts.zero_() if from_meta and not counts.is_meta else counts)
        return self

    def counting(self) -> bool:
        """Whether :meth:`record` adds to ``expert_counts`` now (a subclass that knows more about the call
        refines it): in training, for a forward with autograd on, once. Under activation checkpointing
        the forward runs again in autograd's backward: a non-reentrant checkpoint counted the first
        forward (autograd on), so the recomputation is not counted; a reentrant checkpoint's first
        forward runs without autograd, so each such forward is owed a count, paid at its recomputation."""
        if not self.training:
            return False
        if not torch.is_grad_enabled():
            self._owed += 1
            return False
        if torch._C._current_graph_task_id() == -1:  # not in backward: an ordinary forward
            self._owed = 0
            return True
        if self._owed:  # a reentrant checkpoint's recomputation
            self._owed -= 1
            return True
        return False


class MoEFeedForward(RoutedLayer):
    """Router + experts; ``aux_loss`` holds the last forward's weighted auxiliary loss (see :func:`moe_aux_loss`).

    ``kernel``: how stacked experts run, a :data:`seeking.moe.dispatch.KERNELS` name, or None (the
    default) for the fastest one the device and dtype allow (:func:`seeking.moe.dispatch.kernel_for`).
    """

    kernel: str | None = None

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        *,
        storage: str = "stacked",
        renormalize: bool = True,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
    ) -> None:
        super().__init__(num_experts)
        if storage not in STORAGES:
            raise ConfigError(f"storage must be one of {STORAGES}, got {storage!r}")
        if dim < 1 or hidden < 1:
            raise ConfigError(f"dim and hidden must be positive integers, got {dim} and {hidden}")
        self.router = TopKRouter(
            dim, num_experts, top_k, renormalize=renormalize, aux_loss_coef=aux_loss_coef, z_loss_coef=z_loss_coef
        )
        self.storage = storage
        if storage == "stacked":
            # the same distribution as nn.Linear's default: uniform within 1/sqrt(fan_in)
            self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-1, 1) / math.sqrt(dim))
            self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-1, 1) / math.sqrt(hidden))
        else:
            self.experts = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))
                for _ in range(num_experts)
            )
        self.aux_loss: Tensor = torch.zeros(())
        self.last_token_entropy: Tensor | None = None

    def __getstate__(self) -> dict:
        # the last forward's graph can be neither deep-copied nor pickled: copies get its value
        return {**self.__dict__, "aux_loss": self.aux_loss.detach()}

    def expert_parameters(self) -> Iterator[tuple[nn.Parameter, int | None]]:
        if self.storage == "stacked":
            yield self.w1, None
            yield self.w2, None
        else:
            for k, expert in enumerate(self.experts):
                for p in expert.parameters():
                    yield p, k

    def _experts(self) -> Grouped:
        if self.storage == "list":
            return each_expert(lambda k, x: self.experts[k](x))
        return grouped_mlp(self.w1, self.w2, kernel=self.kernel)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None and (mask.dtype != torch.bool or mask.shape != x.shape[:-1]):
            raise ConfigError(f"mask must be bool shaped {tuple(x.shape[:-1])}, got {mask.dtype} {tuple(mask.shape)}")
        tokens = x.reshape(-1, x.shape[-1])
        valid = None if mask is None else mask.reshape(-1)
        routing = self.router(tokens, valid)
        out = run_experts(tokens, routing.indices, routing.weights, self._experts(), self.num_experts, valid)
        self.aux_loss = routing.aux_loss
        self.record(routing.indices.view(*x.shape[:-1], self.router.top_k), mask)
        with torch.no_grad():
            entropy = torch.special.entr(routing.probs).sum(-1)
            if valid is not None:
                entropy = (entropy * valid).sum() / valid.sum().clamp_min(1)
            self.last_token_entropy = entropy.mean()
        return out.view(x.shape)


def moe_aux_loss(model: nn.Module) -> Tensor:
    """The sum of every :class:`MoEFeedForward`'s ``aux_loss`` from its last forward: add it to the task loss."""
    return sum((m.aux_loss for m in model.modules() if isinstance(m, MoEFeedForward)), torch.zeros(()))
