"""The one protocol between a Mixture-of-Experts layer and :class:`seeking.Excitation` (and the metrics).

A layer takes part by having three things (a user's own MoE layer needs a few lines):

``num_experts: int``
    How many experts the layer has.
``expert_counts: Tensor``
    A float32 buffer of shape ``(num_experts,)``. While the module is training and autograd is on,
    every forward adds the number of valid (non-padding) tokens that the hard top-k routing sent to
    each expert. Counts add up over gradient-accumulation micro-batches; :class:`Excitation` reads
    them when the optimizer steps and then sets them back to zero.
``expert_parameters() -> Iterable[tuple[nn.Parameter, int | None]]``
    Each parameter that belongs to experts, with ``k`` when the whole tensor is expert ``k``'s
    (experts kept as a list of modules), or ``None`` when the tensor is stacked: its dimension 0 has
    ``num_experts`` slices, slice ``k`` being expert ``k``'s.

The routing metrics (:func:`seeking.moe.routing_metrics`) describe the latest forward, whatever the
mode, which ``expert_counts`` does not (evaluation adds nothing to it, and the optimizer zeroes it),
so a layer that is to be measured also has (:class:`MeteredLayer`):

``last_counts: Tensor``
    Shape ``(num_experts,)``, any numeric dtype: the valid tokens that the latest forward routed to
    each expert, in training or evaluation, with autograd on or off; each forward replaces it.

and, for two of the metrics, optionally:

``last_indices: Tensor | None``
    int64 shaped ``(token shape..., k)``: each token's ``k`` experts in the latest forward, -1 for
    padding; needed for ``specialization`` (the token shape is the input's without its last axis).
``last_token_entropy: Tensor | None``
    A scalar: the mean over valid tokens of the entropy (nats) of each token's routing
    distribution in the latest forward; reported as ``token_entropy``.

:class:`seeking.moe.RoutedLayer` provides ``expert_counts``, ``last_counts`` and ``last_indices``,
filled by its ``record(indices, valid)`` from the hard assignments; :class:`seeking.moe.MoEFeedForward`
also ``last_token_entropy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class ExpertLayer(Protocol):
    num_experts: int
    expert_counts: Tensor

    def expert_parameters(self) -> Iterable[tuple[nn.Parameter, int | None]]: ...


@runtime_checkable
class MeteredLayer(ExpertLayer, Protocol):
    """An :class:`ExpertLayer` that the routing metrics can read (``last_counts``; see above)."""

    last_counts: Tensor


def expert_layers(model: nn.Module) -> list[nn.Module]:
    """Every submodule of ``model`` (itself included) that implements :class:`ExpertLayer`, in module order."""
    return [module for module in model.modules() if isinstance(module, ExpertLayer)]
