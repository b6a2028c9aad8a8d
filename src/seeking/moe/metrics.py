"""Routing metrics of a layer's last forward, for logging.

They read any layer that follows :class:`~seeking.moe.protocol.MeteredLayer` (the Excitation protocol
plus ``last_counts``; ``last_indices`` and ``last_token_entropy`` when present), in module order.

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
  Tokens labelled -100 (``cross_entropy``'s ignore index, which ``lm_loss`` uses) are left out.

A layer with no tokens at all has utilization 0 everywhere (all dead, entropy 0).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .protocol import MeteredLayer, expert_layers

IGNORE_LABEL = -100  # F.cross_entropy's default ignore_index


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
    the token shape (a label per example for image tokens, per position for a language model),
    ``IGNORE_LABEL`` (-100) for a token to leave out; other negative labels raise ``ConfigError``.
    """
    token_shape = indices.shape[:-1]
    labels = labels.reshape(*labels.shape, *[1] * (len(token_shape) - labels.dim())).expand(token_shape)
    labels = labels[..., None].expand(indices.shape)
    if ((labels < 0) & (labels != IGNORE_LABEL)).any():
        raise ConfigError(f"labels must be class indices >= 0, or {IGNORE_LABEL} for a token to ignore")
    routed = (indices >= 0) & (labels != IGNORE_LABEL)
    labels = labels.clamp_min(0)  # ignored tokens are not counted: any class will do
    num_classes = int(labels.max()) + 1
    joint = torch.zeros(num_experts * num_classes, device=indices.device).index_add_(
        0, (indices.clamp_min(0) * num_classes + labels).flatten(), routed.flatten().float()
    )
    joint = joint.view(num_experts, num_classes)
    load = joint.sum(1)
    gini_simpson = 1 - (joint / load.clamp_min(1)[:, None]).square().sum(1)
    return float((load * gini_simpson).sum() / load.sum().clamp_min(1))


def layer_metrics(layer: MeteredLayer, labels: Tensor | None = None) -> dict[str, float]:
    """The metrics of ``layer``'s last forward; ``token_entropy`` when the layer has ``last_token_entropy``,
    ``specialization`` when ``labels`` are given and the layer has ``last_indices``."""
    counts = layer.last_counts.float()
    out = {
        "dead_fraction": dead_fraction(counts),
        "max_violation": max_violation(counts),
        "load_entropy": load_entropy(counts),
    }
    token_entropy = getattr(layer, "last_token_entropy", None)
    if token_entropy is not None:
        out["token_entropy"] = float(token_entropy)
    indices = getattr(layer, "last_indices", None)
    if labels is not None and indices is not None:
        out["specialization"] = class_specialization(indices, labels, layer.num_experts)
    return out


def metered_layers(model: nn.Module) -> list[MeteredLayer]:
    """``model``'s expert layers (:func:`~seeking.moe.expert_layers`), each of which must have ``last_counts``.

    Raises ``ConfigError`` naming a layer without it (a layer made for Excitation alone).
    """
    layers = expert_layers(model)
    names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
    unmetered = [f"{names[id(m)]} ({type(m).__name__})" for m in layers if not isinstance(m, MeteredLayer)]
    if unmetered:
        raise ConfigError(
            f"routing metrics describe each MoE layer's latest forward, but {', '.join(unmetered)} has no "
            "last_counts: give it a (num_experts,) tensor that each forward replaces with its routed token "
            "counts (see seeking.moe.protocol), or subclass seeking.moe.RoutedLayer and call record()"
        )
    for m in layers:
        if tuple(m.last_counts.shape) != (m.num_experts,):
            raise ConfigError(
                f"{names[id(m)]}.last_counts has shape {tuple(m.last_counts.shape)} but the layer has "
                f"num_experts={m.num_experts}: it must hold one count per expert"
            )
    return layers


def layer_utilization(model: nn.Module) -> list[list[float]]:
    """Each MoE layer's per-expert utilization in its last forward (module order), for plots."""
    return [utilization(m.last_counts.float()).tolist() for m in metered_layers(model)]


def routing_metrics(model: nn.Module, labels: Tensor | None = None) -> dict[str, float]:
    """``layer{i}/{name}`` for the i-th MoE layer (:func:`metered_layers`) and ``{name}``: the mean over layers.

    ``{}`` for a model without MoE layers; ``ConfigError`` for one whose layer has no ``last_counts``.
    """
    out: dict[str, float] = {}
    per_name: defaultdict[str, list[float]] = defaultdict(list)
    for i, layer in enumerate(metered_layers(model)):
        for name, value in layer_metrics(layer, labels).items():
            out[f"layer{i}/{name}"] = value
            per_name[name].append(value)
    return {**{name: sum(v) / len(v) for name, v in per_name.items()}, **out}
