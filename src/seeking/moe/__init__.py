"""Mixture-of-Experts building blocks, routing metrics and the protocol that Excitation reads."""

from .block import MoEBlock, SelfAttention
from .dispatch import KERNELS, each_expert, group_by_expert, grouped_mlp, kernel_for, run_experts
from .distributed import keep_counts_local
from .layer import MoEFeedForward, RoutedLayer, moe_aux_loss
from .metrics import (
    class_specialization,
    dead_fraction,
    layer_metrics,
    layer_utilization,
    load_entropy,
    max_violation,
    metered_layers,
    routing_metrics,
    utilization,
)
from .protocol import ExpertLayer, MeteredLayer, expert_layers
from .router import Routing, TopKRouter, load_balancing_loss, router_z_loss

__all__ = [
    "KERNELS",
    "ExpertLayer",
    "MeteredLayer",
    "MoEBlock",
    "MoEFeedForward",
    "RoutedLayer",
    "Routing",
    "SelfAttention",
    "TopKRouter",
    "class_specialization",
    "dead_fraction",
    "each_expert",
    "expert_layers",
    "group_by_expert",
    "grouped_mlp",
    "keep_counts_local",
    "kernel_for",
    "layer_metrics",
    "layer_utilization",
    "load_balancing_loss",
    "load_entropy",
    "max_violation",
    "metered_layers",
    "moe_aux_loss",
    "router_z_loss",
    "routing_metrics",
    "run_experts",
    "utilization",
]
