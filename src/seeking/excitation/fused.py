"""Excitation's scaling inside the update: each expert stepped with learning rate ``Phi_k * lr``.

For the optimizers registered here, the base step of a parameter is ``p <- D(p) - lr * U`` where the
update ``U`` and the optimizer state (momentum, moments, step counts) do not depend on ``lr``, and the
decoupled weight decay ``D(p) = (1 - lr * wd) p`` (AdamW) is also linear in ``lr``. Scaling the change
of expert ``k`` by ``Phi_k`` (the wrapper's definition, ``p_old + Phi_k * (p_base - p_old)``) is
therefore the same step taken with learning rate ``Phi_k * lr``: ``p <- (1 - Phi_k lr wd) p -
Phi_k lr U``. A fused step computes exactly that, per expert slice of a stacked tensor or per expert
tensor of list storage, with the state updated by the same operations, in the same order, as torch's
single-tensor implementation (so the state is bit-identical to the plain optimizer's) and without the
snapshot of the expert weights that the general fallback needs. The parameters differ from the
fallback's ``lerp`` by float rounding only (the fallback rounds the base step before scaling it); at
``Phi_k = 1`` they are torch's own bit for bit: the update term is rounded as torch rounds it and the
factor (times the learning rate, a per-expert scalar) enters through one ``addcmul_``.

Each implementation takes ``(optimizer, group, param, grad, weight)`` and updates ``param`` and
``optimizer.state[param]``. ``weight`` is ``Phi`` either as a tensor in float32 (float64 for float64
parameters: the precision in which torch applies its scalar learning rate) shaped to broadcast over
``param`` (``(E, 1, ...)`` for stacked storage, ``()`` for one expert's tensor), or, where the factors
are on the CPU (read without a device synchronisation), Python floats: one for one expert's tensor, a
list of E for a stacked tensor (applied slice by slice along dim 0). The step is then torch's own
operations with ``Phi * lr`` in place of ``lr``, no operation and no memory pass added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

Weight = Tensor | float | list[float]
FusedStep = Callable[[torch.optim.Optimizer, dict[str, Any], Tensor, Tensor, Weight], None]


class Fused(NamedTuple):
    """One optimizer type's fused step and the group options under which it is exact."""

    step: FusedStep
    supports: Callable[[dict[str, Any]], bool]


_FUSED: dict[type[torch.optim.Optimizer], Fused] = {}

# Group options whose torch implementations compute differently (fused kernels, device-side step
# counts, autograd through the step): a group with any of them set takes the snapshot + lerp fallback.
_OTHER_KERNELS = ("fused", "capturable", "differentiable")


def register_fused(
    *types: type[torch.optim.Optimizer], supports: Callable[[dict[str, Any]], bool] = lambda group: True
) -> Callable[[FusedStep], FusedStep]:
    """Decorator: registers a fused step for exactly these optimizer types (a subclass may change the
    step, so it is not matched); ``supports(group)`` says whether a param group's options are handled."""

    def register(step: FusedStep) -> FusedStep:
        for kind in types:
            if kind in _FUSED:
                raise ValueError(f"a fused Excitation step for {kind.__name__} is registered twice")
            _FUSED[kind] = Fused(step, supports)
        return step

    return register


def fused_step(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> FusedStep | None:
    """The fused step for ``group`` of ``optimizer``, or None where the exact fallback must be used:
    an unregistered optimizer type, options the fused step does not reproduce, a tensor-valued
    hyperparameter, or a ``GradScaler`` that hands the optimizer its scale (fused optimizers)."""
    entry = _FUSED.get(type(optimizer))
    if entry is None or any(group.get(option) for option in _OTHER_KERNELS):
        return None
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return None
    if any(torch.is_tensor(v) for key, v in group.items() if key != "params"):
        return None
    if any(torch.is_tensor(v) for v in group.get("betas", ())):
        return None
    return entry.step if entry.supports(group) else None


def fused_types() -> list[str]:
    """Names of the optimizer types with a fused step, sorted."""
    return sorted(kind.__name__ for kind in _FUSED)


def _scalar_dtype() -> torch.dtype:
    # torch's dtype for a step counter kept on the CPU (torch.optim.optimizer._get_scalar_dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _decayed(group: dict[str, Any], param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` negated for ``maximize`` and with L2 weight decay added, as torch's steps do."""
    grad = -grad if group.get("maximize", False) else grad
    return grad.add(param, alpha=group["weight_decay"]) if group["weight_decay"] != 0 else grad


@register_fused(torch.optim.SGD)
def _sgd(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor, grad: Tensor, weight: Weight) -> None:
    """torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize) with lr ``Phi * lr``."""
    grad = _decayed(group, param, grad)
    momentum = group["momentum"]
    if momentum != 0:
        state = optimizer.state[param]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
    _add(param, grad, -group["lr"], weight)


def _slices(weights: list[float], *tensors: Tensor) -> Iterator[tuple[Any, ...]]:
    """``(w_k, *slices k)`` of stacked tensors along dim 0."""
    return zip(weights, *(t.unbind(0) for t in tensors), strict=True)


def _add(param: Tensor, update: Tensor, value: float, weight: Weight) -> None:
    """``param += value * weight * update``, rounded as torch's ``param.add_(update, alpha=value)`` at weight 1."""
    if isinstance(weight, float):  # the common case first: one expert's tensor, factors on the CPU
        param.add_(update, alpha=value * weight)
    elif isinstance(weight, Tensor):
        param.addcmul_(update, value * weight)
    else:
        for w, p, u in _slices(weight, param, update):
            p.add_(u, alpha=value * w)


def _addcdiv(param: Tensor, numerator: Tensor, denom: Tensor, value: float, weight: Weight) -> None:
    """``param += value * weight * numerator / denom``, rounded as torch's ``param.addcdiv_(numerator,
    denom, value=value)`` at weight 1; a tensor weight writes the quotient into ``denom`` (a temporary)."""
    if isinstance(weight, float):
        param.addcdiv_(numerator, denom, value=value * weight)
    elif isinstance(weight, Tensor):
        zero = torch.zeros((), dtype=denom.dtype, device=denom.device)
        param.addcmul_(torch.addcdiv(zero, numerator, denom, value=value, out=denom), weight)
    else:
        for w, p, n, d in _slices(weight, param, numerator, denom):
            p.addcdiv_(n, d, value=value * w)


def _decay(param: Tensor, rate: float, weight: Weight) -> None:
    """``param *= 1 - rate * weight``; at weight 1 torch's Python scalar ``1 - rate`` (a tensor weight in
    float64 for that)."""
    if isinstance(weight, float):
        param.mul_(1 - rate * weight)
    elif isinstance(weight, Tensor):
        param.mul_((1 - rate * weight.double()).to(weight.dtype))
    else:
        for w, p in _slices(weight, param):
            p.mul_(1 - rate * w)


def _adam_state(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor) -> dict[str, Any]:
    state = optimizer.state[param]
    if len(state) == 0:  # torch's lazy initialisation (Adam._init_group), for a group without fused/capturable
        state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


@register_fused(torch.optim.Adam, torch.optim.AdamW)
def _adam(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor, grad: Tensor, weight: Weight) -> None:
    """torch.optim.Adam / AdamW (L2 or decoupled weight decay, amsgrad, maximize) with lr ``Phi * lr``."""
    state = _adam_state(optimizer, group, param)
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    # AdamW of torch < 2.6 has no such option: it always decays decoupled
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
    state["step"] += 1
    grad = -grad if group["maximize"] else grad
    if weight_decay != 0:
        if decoupled:
            _decay(param, lr * weight_decay, weight)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = state["step"].item()  # a CPU tensor: no device synchronisation
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if group["amsgrad"]:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
    _addcdiv(param, exp_avg, denom, -step_size, weight)


def _rmsprop_state(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor) -> dict[str, Any]:
    state = optimizer.state[param]
    if len(state) == 0:  # torch's lazy initialisation (RMSprop._init_group), for a group without capturable
        state["step"] = torch.zeros((), dtype=_scalar_dtype())
        state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


@register_fused(torch.optim.RMSprop)
def _rmsprop(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor, grad: Tensor, weight: Weight
) -> None:
    """torch.optim.RMSprop (momentum, centered, weight decay, maximize) with lr ``Phi * lr``."""
    state = _rmsprop_state(optimizer, group, param)
    state["step"] += 1
    grad = _decayed(group, param, grad)
    alpha = group["alpha"]
    square_avg = state["square_avg"]
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if group["centered"]:
        grad_avg = state["grad_avg"]
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg.add_(group["eps"])
    if group["momentum"] > 0:
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).addcdiv_(grad, avg)
        _add(param, buf, -group["lr"], weight)
    else:
        _addcdiv(param, grad, avg, -group["lr"], weight)


@register_fused(torch.optim.Adagrad)
def _adagrad(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor, grad: Tensor, weight: Weight
) -> None:
    """torch.optim.Adagrad (lr decay, weight decay, initial accumulator, maximize) with lr ``Phi * lr``."""
    state = optimizer.state[param]
    if len(state) == 0:  # a parameter added after construction: torch's lazy initialisation (Adagrad._init_group)
        state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        init = optimizer.defaults["initial_accumulator_value"]
        state["sum"] = torch.full_like(param, init, memory_format=torch.preserve_format)
    state["step"] += 1
    grad = _decayed(group, param, grad)
    clr = group["lr"] / (1 + (state["step"].item() - 1) * group["lr_decay"])
    state_sum = state["sum"]
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt().add_(group["eps"])
    _addcdiv(param, grad, std, -clr, weight)
