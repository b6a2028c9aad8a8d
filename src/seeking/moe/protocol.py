"""The one protocol between a Mixture-of-Experts layer and :class:`seeking.Excitation`.

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


def expert_layers(model: nn.Module) -> list[nn.Module]:
    """Every submodule of ``model`` (itself included) that implements :class:`ExpertLayer`, in module order."""
    return [module for module in model.modules() if isinstance(module, ExpertLayer)]
