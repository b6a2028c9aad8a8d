"""torchtitan's MoE layers made excitable in place, for Excitation on torchtitan's optimizer container.

In a torchtitan config (the model spec's ``post_optimizer_build_fn`` is where torchtitan registers its
own MoE load balancing; see docs/integrations/torchtitan.md):

    excite = excite_after_optimizer_build("zero_sum", then=spec.post_optimizer_build_fn)
    spec = dataclasses.replace(spec, post_optimizer_build_fn=excite)

or by hand, on a model whose weights exist:

    excitable(model)
    excitation = Excitation.attach(optimizers, model, "zero_sum")   # optimizers: torchtitan's OptimizersContainer

torchtitan's ``MoE`` (``torchtitan.models.common.moe``, and its subclasses such as GPT-OSS's) keeps its
routed experts stacked in ``routed_experts.inner_experts`` (``w1_EFD``, ``w2_EDF``, ``w3_EFD``; GPT-OSS
also biases; dim 0 = expert). It counts its own ``tokens_per_expert_E``, but its auxiliary-loss-free load
balancing zeroes that buffer in an optimizer step pre hook, before any post hook could read it, so the
counts here are our own: :func:`excitable` gives each MoE a :class:`MoECounter` child (``seeking_counter``)
that a forward hook on the MoE's router feeds with the router's top-k expert ids. Shared experts are not
routed and are not experts for Excitation. torchtitan's MoE sees no padding (documents are packed), so
every token is counted, as torchtitan's own count does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..excitation import Excitation
from ..moe.layer import RoutedLayer
from . import require

COUNTER = "seeking_counter"  # the attribute name of the counting child on each MoE module


def _moe_class() -> type[nn.Module]:
    return require("torchtitan.models.common.moe", "torchtitan").MoE


class MoECounter(RoutedLayer):
    """The :class:`~seeking.moe.ExpertLayer` of one torchtitan ``MoE`` (its child ``seeking_counter``).

    ``expert_parameters()`` yields the parameters of the MoE's ``routed_experts.inner_experts``, each
    stacked (dim 0 = expert), looked up at every call so that parameters replaced later (``fully_shard``
    makes them DTensors) are the ones scaled. Its buffers ``expert_counts`` and ``last_counts`` (float32,
    ``(num_experts,)``) are not persistent: the model's state dict is unchanged.
    """

    def __init__(self, moe: nn.Module) -> None:
        super().__init__(int(moe.router.num_experts))
        # the MoE is this module's parent: kept out of the module tree (no cycle)
        object.__setattr__(self, "_moe", moe)
        for name, p in self._experts().named_parameters(recurse=False):
            if p.dim() == 0 or p.shape[0] != self.num_experts:
                raise ConfigError(
                    f"{type(self._experts()).__name__}.{name} has shape {tuple(p.shape)}, not stacked by expert "
                    f"(dim 0 = the router's num_experts = {self.num_experts}): this MoE is not supported"
                )

    def _experts(self) -> nn.Module:
        return self._moe.routed_experts.inner_experts

    def expert_parameters(self) -> Iterator[tuple[nn.Parameter, int | None]]:
        for p in self._experts().parameters(recurse=False):
            yield p, None

    def observe(self, router: nn.Module, args: Any, output: tuple[Tensor, Tensor, Tensor]) -> None:
        """The forward hook on the router, whose output is ``(top-k scores, top-k expert ids (B, L, K),
        scores)``: counts the ids. A recomputation while autograd's backward runs (activation
        checkpointing) routes the same tokens again and is not counted twice."""
        if torch._C._current_graph_task_id() != -1:
            return
        ids = output[1]
        to_local = getattr(ids, "to_local", None)  # a DTensor under tensor parallelism: this process's tokens
        self.record((to_local() if to_local is not None else ids).detach())


def excitable(model: nn.Module) -> list[MoECounter]:
    """Make every torchtitan ``MoE`` in ``model`` excitable in place; returns their counters, in module
    order (those of an earlier call when called again).

    Afterwards ``Excitation(optimizer, model)`` or ``Excitation.attach(optimizers, model)`` scales each
    routed expert's step, and :func:`seeking.moe.routing_metrics` reads the routing. Call it once the
    model's weights exist (after ``init_states()``; a model on the meta device is refused, its counts would
    be uninitialised memory after ``to_empty``) and before building Excitation.

    Raises ``ConfigError`` if torchtitan is missing, the model has no torchtitan ``MoE``, or it is still on
    the meta device.
    """
    moe_class = _moe_class()
    layers = [m for m in model.modules() if isinstance(m, moe_class)]
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no torchtitan MoE module (torchtitan.models.common.moe.MoE): "
            "nothing to make excitable"
        )
    counters = []
    for moe in layers:
        counter = getattr(moe, COUNTER, None)
        if counter is None:
            device = moe.router.gate.weight.device
            if device.type == "meta":
                raise ConfigError(
                    "the torchtitan model is still on the meta device: call excitable(model) after "
                    "model.to_empty(...) and model.init_states()"
                )
            counter = MoECounter(moe).to(device)
            setattr(moe, COUNTER, counter)
            moe.router.register_forward_hook(counter.observe)
        counters.append(counter)
    return counters


def excite_after_optimizer_build(
    strategy: str = "zero_sum",
    gamma: float = 1.0,
    then: Callable[[Any, list[nn.Module], Any], None] | None = None,
) -> Callable[[Any, list[nn.Module], Any], None]:
    """A ``post_optimizer_build_fn`` for a torchtitan ``ModelSpec``: torchtitan's trainer calls it as
    ``fn(optimizers, model_parts, parallel_dims)`` once the (parallelised, initialised) model parts and
    the optimizer container exist. It runs ``then`` first (the spec's own function, e.g. torchtitan's
    ``register_moe_load_balancing_hook``), makes every model part excitable and attaches Excitation
    (``strategy``, ``gamma``) to the container; the Excitation is kept as ``optimizers.excitation``
    (for ``last_factors`` and ``discard_counts()``).

    The counts are summed over all processes, which is right for data, fully sharded, context, tensor
    and expert parallelism (each token is counted where it is routed; tensor parallelism without
    sequence sharding counts every token once per tensor-parallel rank, which leaves the utilizations
    unchanged). Under pipeline parallelism the processes hold different layers: refused, attach it
    yourself with ``process_group=`` the processes of one stage.
    """

    def post_optimizer_build(optimizers: Any, model_parts: list[nn.Module], parallel_dims: Any) -> None:
        if then is not None:
            then(optimizers, model_parts, parallel_dims)
        if getattr(parallel_dims, "pp_enabled", False):
            raise ConfigError(
                "excite_after_optimizer_build sums the counts over all processes, but under pipeline parallelism "
                "they hold different layers: call Excitation.attach(optimizers, layers, process_group=<the "
                "processes of this stage>) yourself, with layers = excitable(part) over this stage's model parts"
            )
        layers = [counter for part in model_parts for counter in excitable(part)]
        optimizers.excitation = Excitation.attach(optimizers, layers, strategy, gamma)

    return post_optimizer_build
