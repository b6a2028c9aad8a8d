"""Training FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` with corrected and added formulas.

The convention (:data:`FLOPS_CONVENTION`, stated once here and quoted by every table and plot):

- 2 FLOPs per multiply-add of the matrix products and convolutions; element-wise work
  (activations, normalisation, softmax, pooling, bias, optimizer update) is not counted.
- A training step is the forward and the backward of the loss. The backward counts the gradients
  autograd computes: for each weight-bearing op the weight gradient (as many multiply-adds as its
  forward) and the input gradient (as many again) wherever something upstream needs it, so never
  for the data batch itself: a training step is ``3 x forward - the first layer's forward``.
- Attention counts ``softmax(Q K^T) V`` as two batched matrix products, dense (a causal mask
  computes the full scores on every kernel), and its backward as four (grad of Q, K, V and of the
  scores): 2x its forward on every kernel. Fused kernels that recompute the scores in the backward
  are not charged the recomputation, so the math path and every fused kernel, CPU or CUDA, agree.
- A mixture-of-experts layer counts only what its experts compute: each routed (token, expert)
  pair once, plus the router for every token (the dispatch in :mod:`seeking.moe.dispatch` runs each
  expert on its own tokens only, which the counter sees as it is).

What torch 2.14's own table gets wrong or misses, and :data:`FORMULAS` fixes:

- ``convolution_backward`` counts the weight gradient as if ``groups`` were 1 (``groups`` times
  too many: a depthwise 3x3 conv with C channels, C times), so EfficientNet training steps counted
  about 13x too much (the forward was right);
- the CPU fused attention kernel and its backward (``_scaled_dot_product_flash_attention_for_cpu``)
  and the ``overrideable`` (XPU and out-of-tree) kernels have no formula, so they counted 0;
- the CUDA kernels' backward adds the recomputation of the scores (5 products instead of 4);
- ``mv``, ``addmv``, ``dot``, ``vdot``, ``addbmm``, ``addr``, ``_int_mm``, ``_addmm_activation``,
  ``_grouped_mm`` and the in-place ``addmm_``, ``baddbmm_``... have no formula.

The low-level ``_flash_attention_backward`` and ``_efficient_attention_backward``, reached directly
only by nested tensors and varlen attention (which no model here uses), keep torch's count, which
includes the recomputation.

Any other op that looks like a product, convolution or attention and still has no formula makes
:func:`count_flops` warn, so a silent 0 cannot reach a table again.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, flop_registry, sdpa_flop_count

aten = torch.ops.aten

FLOPS_CONVENTION = (
    "FLOPs: 2 per multiply-add of matrix products and convolutions (element-wise work not counted); "
    "a training step is forward + backward (weight gradients, and input gradients except the data's), "
    "attention backward = 2x its forward, MoE counts routed tokens only"
)


def _conv_backward(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Each of grad input and grad weight repeats the forward's multiply-adds exactly once.

    ``w_shape`` is ``(C_out, C_in / groups, *kernel)``, so the forward count, and with it both
    gradients, are right for grouped and depthwise convolutions (torch's own weight-gradient term
    is not: it treats the batch as channels and loses the ``1 / groups``).
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``Q K^T`` and ``P V``: ``2 * B * H * L * S * (E + Ev)`` (torch's ``sdpa_flop_count``, GQA-aware)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: the forward's products, each twice."""
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


def _mv(a_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _addmv(_self_shape, a_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return _mv(a_shape, v_shape)


def _dot(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


def _bmm(a_shape, b_shape) -> int:
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]


def _addbmm(_self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return _bmm(a_shape, b_shape)


def _addr(_self_shape, u_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * u_shape[0] * v_shape[0]


def _mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _addmm(_self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return _mm(a_shape, b_shape)


def _grouped_mm(
    a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None, *args, out_val=None, **kwargs
) -> int:
    """Rows of ``a`` beyond ``offs[-1]`` belong to no group and are not computed, so not counted.

    2d x 3d (MoE: routed tokens x per-expert weights): ``2 * offs[-1] * K * N``; 3d x 3d:
    ``2 * G * M * K * N``; 3d x 2d: ``2 * M * K * offs[-1]``; 2d x 2d (the weight gradient, K split
    into groups): ``2 * M * N * offs[-1]``.
    """
    used = None  # without offsets, or when only their shape is known (meta, fake): every row
    if offs is not None and offs.numel():
        with contextlib.suppress(RuntimeError):  # meta and fake tensors have no values
            used = int(offs[-1])
    if a.dim() == 2 and b.dim() == 3:
        return 2 * (used if used is not None else a.shape[0]) * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 3:
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if a.dim() == 3:
        return 2 * a.shape[1] * a.shape[2] * (used if used is not None else b.shape[1])
    return 2 * a.shape[0] * b.shape[1] * (used if used is not None else a.shape[1])


_grouped_mm._get_raw = True  # FlopCounterMode passes it the tensors (offs' values), not their shapes

# The ops whose formula we add or replace; everything else keeps torch's own (mm, addmm, bmm,
# baddbmm, convolution forward, the CUDA attention forwards...).
FORMULAS: dict[Any, Callable[..., int]] = {
    aten.convolution_backward: _conv_backward,
    aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    aten._scaled_dot_product_fused_attention_overrideable: _attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    aten._scaled_dot_product_flash_attention_backward: _attention_backward,
    aten._scaled_dot_product_efficient_attention_backward: _attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward: _attention_backward,
    aten._scaled_dot_product_fused_attention_overrideable_backward: _attention_backward,
    aten.mv: _mv,
    aten.addmv: _addmv,
    aten.dot: _dot,
    aten.vdot: _dot,
    aten.addbmm: _addbmm,
    aten.addr: _addr,
    aten._int_mm: _mm,
    aten._addmm_activation: _addmm,
    # in-place variants: torch's table has only the out-of-place ones
    aten.addmm_: _addmm,
    aten.baddbmm_: _addbmm,
    aten.addbmm_: _addbmm,
    aten.addmv_: _addmv,
    aten.addr_: _addr,
    aten._grouped_mm: _grouped_mm,
}

# Names of ops that do multiply-adds in bulk: seen without a formula, they would count 0.
_HEAVY = re.compile(r"(^|_)[a-z0-9]*(mm|mv)(_|$)|(^|_)v?dot$|matmul|einsum|conv(olution|_|\d|$)|attention|attn")


class _Uncounted(TorchDispatchMode):
    """Records every op that ran, looks heavy and has no formula."""

    supports_higher_order_operators = True  # flex attention and the like pass through

    def __init__(self, known: set[Any]) -> None:
        super().__init__()
        self.known = known
        self.missing: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "overloadpacket", func)
        if packet not in self.known and _HEAVY.search(getattr(packet, "__name__", str(packet))):
            self.missing.add(str(packet))
        return func(*args, **(kwargs or {}))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn()`` runs (forward, and backward if it calls one), by :data:`FLOPS_CONVENTION`.

    Warns (``RuntimeWarning``, naming the ops) when an op that multiplies in bulk ran without a
    formula, since the count then leaves it out.
    """
    with FlopCounterMode(display=False, custom_mapping=FORMULAS) as counter:
        guard = _Uncounted(set(flop_registry) | set(FORMULAS))
        with guard:
            fn()
    if guard.missing:
        warnings.warn(
            f"FLOP count leaves out {sorted(guard.missing)}: no formula for them (add one to seeking.flops.FORMULAS)",
            RuntimeWarning,
            stacklevel=2,
        )
    return counter.get_total_flops()


def loss_step_flops(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Callable[[Any, torch.Tensor], torch.Tensor]
) -> int:
    """FLOPs of one forward and backward pass of ``loss(model(inputs), targets)``.

    Counted by :func:`count_flops` on a deep copy, so the model's weights, gradients and
    statistics are left alone. The inputs' values are used as given (token ids must be valid).
    """
    clone = copy.deepcopy(model).train()
    return count_flops(lambda: loss(clone(inputs), targets).backward())


def train_step_flops(model: nn.Module, inputs: torch.Tensor, num_classes: int) -> int:
    """FLOPs of one forward and backward pass of the classifier ``model`` on a batch shaped like
    ``inputs`` (cross-entropy over ``num_classes``), by :func:`loss_step_flops`."""
    x = torch.zeros_like(inputs)
    y = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    return loss_step_flops(model, x, y.clamp_max(num_classes - 1), F.cross_entropy)


def gpt_train_flops_per_token(depth: int, width: int, vocab_size: int, block_size: int, mlp_ratio: int = 4) -> int:
    """Training FLOPs per token of a dense GPT (:class:`seeking.models.gpt.GPT`) by :data:`FLOPS_CONVENTION`,
    in closed form, for sequences of ``block_size`` tokens:

    ``6 * N + 12 * depth * block_size * width``, with ``N = (4 + 2 * mlp_ratio) * depth * width**2
    + width * vocab_size`` the weights of the matrix products (the blocks' ``qkv``, ``proj``,
    ``fc1``, ``fc2`` and the tied head; embedding look-ups, biases and norms are element-wise).

    ``6 * N``: 2 FLOPs per weight and token forward, twice that backward (the weight gradient and the
    input gradient, which every product needs, since its input depends on the trained embeddings).
    Attention, per layer and token: ``Q K^T`` and ``P V`` forward are ``2 * 2 * block_size * width``
    (dense: the causal mask computes every score), backward twice that, together
    ``12 * block_size * width``. This is Kaplan et al. (2020)'s ``6N + 6 n_layer n_ctx d_attn`` with
    the attention term doubled for the dense scores (PaLM, Chowdhery et al. 2022, App. B:
    ``6N + 12 L H Q T``).
    """
    weights = (4 + 2 * mlp_ratio) * depth * width**2 + width * vocab_size
    return 6 * weights + 12 * depth * block_size * width


__all__ = [
    "FLOPS_CONVENTION",
    "FORMULAS",
    "count_flops",
    "gpt_train_flops_per_token",
    "loss_step_flops",
    "train_step_flops",
]
