"""Run each token through its top-k experts, grouped by expert, and add the weighted outputs back.

The ``T * k`` (token, expert) assignments are sorted by expert with one stable ``argsort``; the
tokens are gathered in that order, so each expert's tokens are one contiguous slice; each expert
runs once on its slice (a loop over experts, never over tokens); the outputs, times their routing
weights, are added back to their tokens with ``index_add``. An expert with no tokens runs on an
empty slice, so its parameters get a zero gradient rather than none: stacked and list storage then
give every optimizer the same gradients (a stacked tensor has a gradient for all its slices or none),
and train identically, momentum and weight decay included (docs/EXCITATION.md). Padding tokens
are sorted into a last group that no expert runs, so their output is zero.

The slice sizes come to the host once per call (one device sync), which both storages need for
``split``. ``torch.nn.functional.grouped_mm`` would avoid it for stacked weights but is CUDA-only in
practice (CPU needs 16-byte strides and has no backward for empty groups), so both storages use
the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Expert = Callable[[int, Tensor], Tensor]  # (expert index, its tokens (n, dim), n >= 0) -> outputs (n, dim)


def group_by_expert(indices: Tensor, num_experts: int, valid: Tensor | None = None) -> tuple[Tensor, list[int]]:
    """Assignment order sorted by expert (flat positions into ``indices`` (T, k)) and each expert's group size.

    The order's tail holds the padding tokens' assignments, which belong to no group.
    """
    experts = indices.flatten()
    if valid is not None:
        experts = experts.masked_fill(~valid.repeat_interleave(indices.shape[1]), num_experts)
    order = torch.argsort(experts, stable=True)
    sizes = torch.bincount(experts, minlength=num_experts + 1)[:num_experts].tolist()
    return order, sizes


def run_experts(
    x: Tensor, indices: Tensor, weights: Tensor, expert: Expert, num_experts: int, valid: Tensor | None = None
) -> Tensor:
    """``out[t] = sum_j weights[t, j] * expert(indices[t, j], x[t])`` for valid tokens, 0 for the others.

    ``x`` (T, dim), ``indices`` and ``weights`` (T, k), ``valid`` (T,) bool or None (all valid).
    """
    order, sizes = group_by_expert(indices, num_experts, valid)
    routed = order[: sum(sizes)]
    tokens = routed // indices.shape[1]
    outputs = [expert(e, group) for e, group in enumerate(x[tokens].split(sizes))]
    y = torch.cat(outputs) * weights.flatten()[routed, None].to(outputs[0].dtype)
    return y.new_zeros(x.shape[0], y.shape[1]).index_add(0, tokens, y)
