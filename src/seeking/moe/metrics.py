"""Routing metrics of a layer's last forward, for logging.

With ``c_k`` the tokens routed to expert ``k`` (every one of a token's ``top_k`` assignments counts),
``N = sum_k c_k``, ``E`` experts and load shares ``s_k = c_k / N``:

- ``utilization_k = c_k / (N / E) = E * s_k``: 1 is the fair share.
- ``dead_fraction``: the fraction of experts with ``c_k = 0``.
- ``max_violation = max_k utilization_k - 1``: 0 when balanced, ``E - 1`` when one expert takes all.
- ``load_entropy = -sum_k s_k log s_k`` (nats): ``log E`` when balanced, 0 when one expert takes all.
- ``token_entropy`` (softmax-routed layers only): the mean over tokens of the entropy of each
  token's routing distribution; low means a confident router.
- ``specialization`` (needs labels): for each expert, the Gini-Simpson index ``1 - sum_c q_kc^2``
  of the label distribution ``q_k`` of its tokens, averaged with weights ``s_k``. 0 means every
  expert sees a single class; it is ``1 - 1/C`` when routing ignores ``C`` balanced classes.

A layer with no tokens at all has utilization 0 everywhere (all dead, entropy 0).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from .layer import RoutedLayer


def utilization(counts: Tensor) -> Tensor:
    """Each expert's count relative to the fair share ``total / E``."""
    return counts * counts.numel() / counts.sum().clamp_min(torch.finfo(counts.dtype).tiny)


def dead_fraction(counts: Tensor) -> float:
    return float((counts == 0).float().mean())


def max_violation(counts: Tensor) -> float:
    return float(utilization(counts).max() - 1)


def load_entropy(counts: Tensor) -> float:
    shares = utilization(counts) / counts.numel()
    return float(torch.special.entr(shares).sum())


def class_specialization(indices: Tensor, labels: Tensor, num_experts: int) -> float:
    """Load-weighted Gini-Simpson index of the labels each expert receives (lower = more specialised).

    ``indices`` (token shape..., k), -1 for padding; ``labels`` int64 shaped like a leading part of
    the token shape (a label per example for image tokens, per position for a language model).
    """
    token_shape = indices.shape[:-1]
    labels = labels.reshape(*labels.shape, *[1] * (len(token_shape) - labels.dim())).expand(token_shape)
    labels = labels[..., None].expand(indices.shape)
    num_classes = int(labels.max()) + 1
    routed = indices >= 0
    joint = torch.zeros(num_experts * num_classes, device=indices.device).index_add_(
        0, (indices.clamp_min(0) * num_classes + labels).flatten(), routed.flatten().float()
    )
    joint = joint.view(num_experts, num_classes)
    load = joint.sum(1)
    gini_simpson = 1 - (joint / load.clamp_min(1)[:, None]).square().sum(1)
    return float((load * gini_simpson).sum() / load.sum().clamp_min(1))


def layer_metrics(layer: RoutedLayer, labels: Tensor | None = None) -> dict[str, float]:
    """The metrics of ``layer``'s last forward; ``specialization`` only when ``labels`` are given."""
    counts = layer.last_counts
    out = {
        "dead_fraction": dead_fraction(counts),
        "max_violation": max_violation(counts),
        "load_entropy": load_entropy(counts),
    }
    token_entropy = getattr(layer, "last_token_entropy", None)
    if token_entropy is not None:
        out["token_entropy"] = float(token_entropy)
    if labels is not None and layer.last_indices is not None:
        out["specialization"] = class_specialization(layer.last_indices, labels, layer.num_experts)
    return out


def layer_utilization(model: nn.Module) -> list[list[float]]:
    """Each routed layer's per-expert utilization in its last forward (module order), for plots."""
    return [utilization(m.last_counts).tolist() for m in model.modules() if isinstance(m, RoutedLayer)]


def routing_metrics(model: nn.Module, labels: Tensor | None = None) -> dict[str, float]:
    """``layer{i}/{name}`` for the i-th routed layer (module order) and ``{name}``: the mean over layers."""
    out: dict[str, float] = {}
    per_name: defaultdict[str, list[float]] = defaultdict(list)
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, RoutedLayer)):
        for name, value in layer_metrics(layer, labels).items():
            out[f"layer{i}/{name}"] = value
            per_name[name].append(value)
    return {**{name: sum(v) / len(v) for name, v in per_name.items()}, **out}
