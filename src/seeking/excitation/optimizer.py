"""Excitation (arXiv 2602.21798): the base optimizer's step for each expert, scaled by its utilization.

    optimizer = Excitation(torch.optim.AdamW(model.parameters(), lr=1e-3), model, strategy="zero_sum")
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)     # MoE layers count the tokens routed to each expert
        optimizer.zero_grad(); loss.backward(); optimizer.step()

At each step, for each MoE layer (see :mod:`seeking.moe.protocol`), the wrapper reads the tokens routed
to each expert since the last step, turns them into utilizations ``u_k`` (fractions of the layer's
routed assignments, summed over all processes when ``torch.distributed`` is initialized), computes one
factor ``Phi_k`` per expert with the chosen strategy, and moves each expert from its old value
``theta_k`` to ``theta_k + Phi_k * delta_k``, where ``delta_k`` is the base optimizer's change. The base
optimizer's momentum and moment estimates are left exactly as it computed them; the wrapper keeps no
per-parameter state and has no learnable parameters.

Two mechanisms compute the same step. For the optimizers of :mod:`seeking.excitation.fused` (SGD, Adam,
AdamW, RMSprop, Adagrad with their usual options) the experts are stepped with learning rate
``Phi_k * lr`` inside the update itself, at about the cost of the plain step. For any other optimizer or
option, the general fallback snapshots the experts, lets the base optimizer step and ``lerp``s each
expert from its snapshot by ``Phi_k``.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError, SeekingWarning
from ..moe.distributed import broadcast_counts
from ..moe.protocol import ExpertLayer, expert_layers
from .fused import FusedStep, Weight, fused_step
from .strategies import get_strategy

_PROTOCOL = (
    "Excitation needs at least one module with num_experts, expert_counts and expert_parameters() "
    "(seeking.moe.protocol); a Hugging Face transformers or torchtitan MoE model gets them from "
    "excitable(model) in seeking.integrations.transformers or seeking.integrations.torchtitan"
)


_PICKLED = ("optimizer", "strategy", "gamma", "generator", "layers", "_scaled", "last_factors", "_unchecked", "fused")
# not pickled: _fusing, _lerped, _before (empty between steps) and _handles (hooks are not copied: a copy
# is a wrapper)
# Steps at whose start the counts are checked (one host sync each): a layer that counts nothing (a wrong
# adapter, a counter that something else zeroes) shows from the first step; later steps stay sync-free.
CHECKED_STEPS = 8


class _Scaled(NamedTuple):
    """A parameter whose step is scaled: by ``Phi[layer][expert]``, or slice by slice along dim 0 when
    ``expert`` is None."""

    param: Tensor
    layer: int
    expert: int | None


class Excitation(torch.optim.Optimizer):
    """Wraps an optimizer so that each expert's step is scaled by a function of its utilization.

    It is a :class:`torch.optim.Optimizer` (so LR schedulers accept it) whose ``param_groups``,
    ``state`` and ``defaults`` are the wrapped optimizer's own objects. Optimizer's hooks work as for
    any optimizer: step pre hooks run before the whole step (and may return new ``(args, kwargs)``),
    step post hooks after it, scaling included; the wrapped optimizer's own hooks run around its step
    inside. Global hooks (``torch.optim.optimizer.register_optimizer_step_pre_hook``) therefore fire
    for both, as for torch's own wrappers (``ZeroRedundancyOptimizer``). The state dict hooks run
    around :meth:`state_dict` and :meth:`load_state_dict`. Copies and pickles start without hooks.

    Args:
        optimizer: the base optimizer (SGD, Adam, AdamW, RMSprop, Adagrad, ...); it must hold every
            expert parameter. It must step with at most one evaluation of the loss (not LBFGS).
        model_or_layers: a model, whose submodules implementing :class:`seeking.moe.ExpertLayer` are
            used, or a sequence of such layers.
        strategy: a name from :func:`seeking.excitation.list_strategies`: ``"zero_sum"`` (default),
            ``"positive_sum"``, ``"exp_diff"``, or the controls ``"global"``, ``"random"``,
            ``"inverted"``; see :mod:`seeking.excitation.strategies` for the formulas.
        gamma: the utilization exponent, > 0 (default 1).
        seed: seeds the wrapper's own CPU generator, used by the ``"random"`` strategy.
        include: extra ``(param, layer, expert)`` triples scaled like an expert of ``layer`` (one of
            the wrapper's layers): like expert ``expert``, or slice by slice along dim 0 when ``expert``
            is None. By default only the layers' expert parameters are scaled; the router and all
            other parameters move exactly as the base optimizer says.
        process_group: the processes over which the counts are summed when ``torch.distributed`` is
            initialised (default: the default group, all processes): under pipeline or expert
            parallelism, the group of the processes that hold the same experts and see different data.
        fused: step the experts with learning rate ``Phi_k * lr`` inside the update where the optimizer
            type and the param group's options allow it (:func:`seeking.excitation.fused_types`; default
            True); False always takes the general fallback (snapshot, base step, ``lerp``). Both give
            the same parameters up to float rounding and the same optimizer state bit for bit.

    Phi is computed per layer over that layer's experts; a layer that routed no token since the last
    step gets factors of 1. A loop that skips a step (a non-finite loss, a ``GradScaler`` skip) calls
    :meth:`discard_counts` instead of :meth:`step`, so the next step's factors use its own batch only.
    ``last_factors`` holds the factors of the last step, one tensor per layer (in the order of
    ``layers``), for logging. ``step(closure)`` evaluates the closure once, with
    autograd on, before reading the counts, and returns its loss. Expert parameters may be DTensors
    (FSDP2's ``fully_shard``): each process scales the experts of its own shard (docs/integrations/fsdp2.md).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model_or_layers: nn.Module | Sequence[nn.Module],
        strategy: str = "zero_sum",
        gamma: float = 1.0,
        *,
        seed: int = 0,
        include: Iterable[tuple[Tensor, nn.Module, int | None]] = (),
        process_group: dist.ProcessGroup | None = None,
        fused: bool = True,
    ) -> None:
        # Optimizer.__init__ is deliberately not called: param_groups, state and defaults are the
        # wrapped optimizer's (properties below). __setstate__ sets up Optimizer's hooks instead.
        _check_settings(strategy, gamma)
        self.optimizer = optimizer
        self.__setstate__({})
        self.strategy = strategy
        self.gamma = float(gamma)
        self.generator = torch.Generator().manual_seed(seed)
        names, self.layers = _named_layers(model_or_layers)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        scaled = []
        for i, (name, layer) in enumerate(zip(names, self.layers, strict=True)):
            counts_shape = tuple(layer.expert_counts.shape)
            if counts_shape != (layer.num_experts,):
                raise ConfigError(
                    f"{name}.expert_counts has shape {counts_shape} but the layer has num_experts="
                    f"{layer.num_experts}: make it a float32 buffer of shape ({layer.num_experts},)"
                )
            scaled += [_scaled(p, i, k, name, layer.num_experts, in_optimizer) for p, k in layer.expert_parameters()]
        for p, layer, k in include:
            i = next((i for i, known in enumerate(self.layers) if known is layer), None)
            if i is None:
                raise ConfigError(
                    f"include names a {type(layer).__name__} that is not one of the wrapper's MoE layers: "
                    "pass a layer of the model (or of the layer list) given to Excitation"
                )
            scaled.append(_scaled(p, i, k, f"include for {names[i]}", layer.num_experts, in_optimizer))
        if len({id(s.param) for s in scaled}) != len(scaled):
            raise ConfigError(
                "a parameter is scaled twice (an expert parameter listed twice, or also given in include): "
                "list each parameter once"
            )
        self._scaled = scaled
        self.last_factors: list[Tensor] = []
        self._unchecked = CHECKED_STEPS
        self.process_group = process_group
        self.fused = bool(fused)
        if broadcast := broadcast_counts(model_or_layers):
            warnings.warn(
                f"the model is in DistributedDataParallel, which broadcasts rank 0's {broadcast[0]} (and "
                f"{len(broadcast) - 1} more counting buffers) at each forward after a synchronised backward: with "
                "gradient accumulation without no_sync() the other ranks' counts are lost. Call "
                "seeking.moe.keep_counts_local(model) before DistributedDataParallel(model)",
                SeekingWarning,
                stacklevel=2,
            )
        self._fusing: list[tuple[_Scaled, FusedStep, dict[str, Any], Tensor]] = []  # stepped by a fused step
        self._lerped: list[_Scaled] = []  # stepped by the base optimizer, then lerped from _before
        self._before: list[Tensor] = []  # their values before the base step
        self._handles: list[Any] = []  # the hooks of attach()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Base optimizer step, then each expert's change scaled by its factor; zeroes the counts."""
        if self._handles:
            raise ConfigError(
                "this Excitation is attached to its optimizer (Excitation.attach): call the optimizer's own "
                "step(), which scales the experts' changes"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._begin()
        try:
            self.optimizer.step()
        except BaseException:
            self._abandon()
            raise
        self._scale()
        return loss

    @classmethod
    def attach(
        cls,
        optimizer: torch.optim.Optimizer,
        model_or_layers: nn.Module | Sequence[nn.Module],
        strategy: str = "zero_sum",
        gamma: float = 1.0,
        *,
        seed: int = 0,
        include: Iterable[tuple[Tensor, nn.Module, int | None]] = (),
        process_group: dist.ProcessGroup | None = None,
        fused: bool = True,
    ) -> Excitation:
        """Excitation as hooks on ``optimizer`` itself, for code that must keep its optimizer object
        (a framework's, an optimizer container): ``optimizer.step()`` then scales the experts' changes
        exactly as the wrapper's :meth:`step` does (bit-identical), and ``optimizer.state_dict()``
        carries the wrapper's settings under ``"excitation"``. Arguments as for the constructor.

        Returns the Excitation, for :meth:`discard_counts`, ``last_factors`` and :meth:`detach`; its own
        :meth:`step` is refused. The hooks are a step pre hook (which sets aside the gradients of the
        experts that a fused step updates, and snapshots the others), a step post hook (factors from the
        counts, then the experts' steps) and the state dict hooks."""
        self = cls(
            optimizer,
            model_or_layers,
            strategy,
            gamma,
            seed=seed,
            include=include,
            process_group=process_group,
            fused=fused,
        )
        self._handles = [
            # a closure runs inside the base step, after this hook: its gradients cannot be set aside.
            # args are step's own, the optimizer first.
            optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self._begin(
                    fuse=(args[1] if len(args) > 1 else kwargs.get("closure")) is None
                )
            ),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self._scale()),
            optimizer.register_state_dict_post_hook(lambda opt, state: self._with_own(state)),
            optimizer.register_load_state_dict_pre_hook(lambda opt, state: self._load_own(state)),
        ]
        return self

    def detach(self) -> None:
        """Remove the hooks of :meth:`attach`: the optimizer steps plainly again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _begin(self, fuse: bool = True) -> None:
        """Before the base step: take the gradients of the experts that a fused step will update (so that
        the base optimizer skips them) and snapshot the rest."""
        self._abandon()  # a base step that raised under attach()
        groups = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        steps: dict[int, FusedStep | None] = {}
        self._fusing, self._lerped = [], []
        for s in self._scaled:
            group, grad = groups[id(s.param)], s.param.grad
            if id(group) not in steps:
                steps[id(group)] = fused_step(self.optimizer, group) if self.fused and fuse else None
            step = steps[id(group)]
            if grad is None and step is not None:
                continue  # a registered optimizer skips a parameter without gradient: nothing to scale
            if step is None or grad.is_sparse or s.param.is_complex() or _dtensor(s.param) is not None:
                self._lerped.append(s)
            else:
                self._fusing.append((s, step, group, grad))
                s.param.grad = None
        self._before = [s.param.clone() for s in self._lerped]

    def _give_back_grads(self) -> None:
        for s, _, _, grad in self._fusing:
            if s.param.grad is None:  # else a backward has run since (after a step that raised)
                s.param.grad = grad

    def _abandon(self) -> None:
        """After a base step that raised: the gradients given back, nothing left over for the next step."""
        self._give_back_grads()
        self._fusing, self._lerped, self._before = [], [], []

    @torch.no_grad()
    def _scale(self) -> None:
        """After the base step: the fused experts' steps, and the others' changes scaled from the snapshot."""
        self._give_back_grads()
        factors = self._factors()
        weights: dict[Any, Any] = {}
        for s, step, group, grad in self._fusing:
            step(self.optimizer, group, s.param, grad, _fused_weight(s, factors, weights))
        for s, old in zip(self._lerped, self._before, strict=True):
            # old + weight * (new - old), exact at both ends: factor 0 keeps the old value, 1 the new one.
            torch.lerp(old, s.param, _on_mesh_of(s.param, _shaped(s, factors[s.layer].to(s.param.dtype))), out=s.param)
        self._fusing, self._lerped, self._before = [], [], []
        self.discard_counts()
        self.last_factors = factors

    @torch.no_grad()
    def discard_counts(self) -> None:
        """Zeroes every layer's routing counts without stepping: for a trainer that skips a step
        (a non-finite loss, a ``GradScaler`` that skips ``step``), so that the next :meth:`step`
        scales by that step's batch alone, not by the counts of two batches. :meth:`step` calls it."""
        for layer in self.layers:
            layer.expert_counts.zero_()

    def _factors(self) -> list[Tensor]:
        """Per layer, the factors from the counts since the last step (summed over processes)."""
        counts = [layer.expert_counts.detach().float() for layer in self.layers]
        if dist.is_available() and dist.is_initialized():
            flat = torch.cat(counts)
            dist.all_reduce(flat, group=self.process_group)
            counts = list(flat.split([c.numel() for c in counts]))
        if self._unchecked > 0:
            self._warn_if_nothing_counted(counts)
        strategy = get_strategy(self.strategy)
        factors = []
        for c in counts:
            total = c.sum()
            phi = strategy(c / total, self.gamma, self.generator)
            factors.append(torch.where(total > 0, phi, torch.ones_like(phi)))
        return factors

    def _warn_if_nothing_counted(self, counts: list[Tensor]) -> None:
        """Warn once if no layer counted a token since the last step: every factor is then 1 and the
        step is the plain optimizer's, which would otherwise pass unseen."""
        self._unchecked -= 1
        if self.layers and not any(bool(c.sum() > 0) for c in counts):
            self._unchecked = 0
            warnings.warn(
                f"no expert layer counted a routed token since the last step ({len(self.layers)} layers): "
                "Excitation scaled nothing, so this step was the plain optimizer's. Check that a forward pass "
                "in training mode ran before step() and that nothing else zeroes the layers' expert_counts "
                "(seeking.moe.protocol)",
                SeekingWarning,
                stacklevel=3,
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's state dict, with the wrapper's settings under the key ``"excitation"``.

        The wrapper's own state dict hooks run around it (the wrapped optimizer's run inside)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = self._with_own(self.optimizer.state_dict())
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            returned = post_hook(self, state)
            state = state if returned is None else returned
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Loads :meth:`state_dict`'s output; a plain optimizer's state dict keeps the wrapper's settings.

        The wrapper's own load hooks run around it: a pre hook may return a replacement state dict."""
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            returned = pre_hook(self, state_dict)
            state_dict = state_dict if returned is None else dict(returned)
        self.optimizer.load_state_dict(self._load_own(state_dict))
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _with_own(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` (an optimizer's state dict) with the wrapper's settings and generator added."""
        state["excitation"] = {"strategy": self.strategy, "gamma": self.gamma, "generator": self.generator.get_state()}
        return state

    def _load_own(self, state: dict[str, Any]) -> dict[str, Any]:
        """Take the wrapper's settings from ``state`` (if it has them); returns the rest, for the optimizer."""
        own = state.get("excitation")
        if own is not None:
            _check_settings(own["strategy"], own["gamma"])
            self.strategy, self.gamma = own["strategy"], float(own["gamma"])
            # a CPU ByteTensor, whatever moved the state dict (Accelerate moves every tensor to the device)
            self.generator.set_state(torch.as_tensor(own["generator"]).to("cpu", torch.uint8).contiguous())
        return {k: v for k, v in state.items() if k != "excitation"}

    def __getstate__(self) -> dict[str, Any]:
        # Like Optimizer's, the wrapper's own state only: no hooks (a copy starts without them) and no
        # LR scheduler's patch of ``step``, which would step the original.
        return {name: self.__dict__[name] for name in _PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Optimizer's: adds empty hook registries and wraps ``step`` (once per class) to run the step hooks.
        super().__setstate__(state)
        for transient in ("_fusing", "_lerped", "_before"):
            self.__dict__.setdefault(transient, [])
        self.__dict__.setdefault("fused", True)
        self.__dict__.setdefault("_handles", [])
        self.__dict__.setdefault("process_group", None)  # a process group is not copied: a copy sums over the default

    def __repr__(self) -> str:
        return (
            f"Excitation(strategy={self.strategy!r}, gamma={self.gamma}, layers={len(self.layers)}, "
            f"optimizer={self.optimizer!r})"
        )


def _shaped(s: _Scaled, phi: Tensor) -> Tensor:
    """The factors ``phi`` (E,) of ``s``'s layer as ``s`` takes them: shape ``(E, 1, ...)`` for a stacked
    tensor, ``()`` (its expert's) else."""
    return phi.view(-1, *[1] * (s.param.dim() - 1)) if s.expert is None else phi[s.expert]


def _fused_weight(s: _Scaled, factors: list[Tensor], cache: dict[Any, Any]) -> Weight:
    """The factors for a fused step: Python floats when they are on the CPU (no device to wait for), one
    for one expert's tensor, the layer's list for a stacked tensor; else a tensor in float32 or wider
    (:func:`_shaped`). ``cache`` holds each layer's conversion for the step."""
    floats = cache.get(s.layer)
    if floats is None:
        phi = factors[s.layer]
        floats = cache[s.layer] = phi.tolist() if phi.device.type == "cpu" else False
    if floats is not False:
        return floats if s.expert is None else floats[s.expert]
    phi = factors[s.layer]
    dtype = torch.promote_types(s.param.dtype, torch.float32)
    if (s.layer, dtype) not in cache:
        cache[s.layer, dtype] = phi.to(dtype)
    return _shaped(s, cache[s.layer, dtype])


def _dtensor(param: Tensor) -> Any:
    """The DTensor module if ``param`` is a DTensor (FSDP2's ``fully_shard``, tensor parallelism), else None."""
    # Whoever made a DTensor imported its module; importing it here would add ~0.5 s to every start.
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor if dtensor is not None and isinstance(param, dtensor.DTensor) else None


def _on_mesh_of(param: Tensor, weight: Tensor) -> Tensor:
    """``weight`` as ``param`` needs it in ``lerp``: itself, or for a DTensor parameter the same factors
    replicated on its device mesh, so that DTensor gives each process the rows of its own shard (uneven
    shards included) without communication."""
    dtensor = _dtensor(param)
    if dtensor is None:
        return weight
    mesh = param.device_mesh
    return dtensor.DTensor.from_local(weight, mesh, [dtensor.Replicate()] * mesh.ndim, run_check=False)


def _check_settings(strategy: str, gamma: float) -> None:
    get_strategy(strategy)
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"gamma must be a finite number > 0 (1.0 is the paper's default), got {gamma!r}")


def _named_layers(model_or_layers: nn.Module | Sequence[nn.Module]) -> tuple[list[str], list[Any]]:
    if isinstance(model_or_layers, nn.Module):
        names = {id(module): name or type(module).__name__ for name, module in model_or_layers.named_modules()}
        layers = expert_layers(model_or_layers)
        what = type(model_or_layers).__name__
    else:
        layers = list(model_or_layers)
        names = {id(layer): f"layers[{i}]" for i, layer in enumerate(layers)}
        for layer in layers:
            if not isinstance(layer, ExpertLayer):
                raise ConfigError(f"{names[id(layer)]} ({type(layer).__name__}) is not an MoE layer: {_PROTOCOL}")
        what = "the layer list"
    if not layers:
        raise ConfigError(f"{what} has no MoE layer: {_PROTOCOL}")
    return [names[id(layer)] for layer in layers], layers


def _scaled(
    param: Tensor, layer: int, expert: int | None, name: str, num_experts: int, in_optimizer: set[int]
) -> _Scaled:
    """Checks one expert parameter of the layer called ``name``."""
    shape = tuple(param.shape)
    if expert is None and shape[:1] != (num_experts,):
        raise ConfigError(
            f"{name}: a stacked expert parameter has shape {shape}, but its dim 0 must be num_experts={num_experts}; "
            "yield (param, k) instead for a parameter that belongs to expert k alone"
        )
    if expert is not None and not 0 <= expert < num_experts:
        raise ConfigError(
            f"{name}: expert index {expert} is out of range for num_experts={num_experts}; use 0..{num_experts - 1}"
        )
    if id(param) not in in_optimizer:
        raise ConfigError(
            f"{name}: an expert parameter of shape {shape} is not in the wrapped optimizer's param_groups: "
            "build the optimizer over all of the model's parameters (Excitation scales the steps it takes)"
        )
    return _Scaled(param, layer, expert)
