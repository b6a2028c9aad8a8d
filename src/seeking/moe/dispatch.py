"""Run each token through its top-k experts, grouped by expert, and add the weighted outputs back.

The ``T * k`` (token, expert) assignments are sorted by expert with one stable ``argsort``; the
tokens are gathered in that order, so each expert's tokens are one contiguous slice, and the
experts run on their slices by a :data:`Grouped` function (a loop over experts, never over
tokens); the outputs, times their routing weights, are added back to their tokens with
``index_add``. Padding tokens are sorted after every group; no expert runs on them and their
output is zero.

Two ways to run the groups (:data:`KERNELS`, chosen per call by :func:`kernel_for`; on the CPU by the
rows per expert as well):

- ``grouped_mm`` (stacked weights): one ``torch._grouped_mm`` per matrix product of all experts,
  the group boundaries given as a tensor of offsets. On CUDA with bfloat16 (autocast) on Hopper or
  newer, torch runs it as one grouped GEMM without reading the offsets on the host: no host sync
  per layer. In other dtypes and on CPU, torch loops over the groups in C++ (CPU: float32, bfloat16
  and float16; the rows' strides must be multiples of 16 bytes). Its backward writes each weight's
  gradient into one stacked tensor. Not yet run on a GPU: the device check
  (``benchmarks/device_check.py``) is where that happens; on CPU the same function runs and is
  tested against the loop.
- ``loop``: each expert once on its slice, the slice sizes read on the host once per call (one
  device sync). For list storage, for stacked weights that ``grouped_mm`` does not take
  (float64, unaligned widths), and on the CPU from :data:`CPU_LOOP_ROWS_PER_EXPERT` rows per expert.

Both give every expert a gradient, a zero one when it got no tokens, so stacked and list storage
give every optimizer the same gradients (a stacked tensor has a gradient for all its slices or
none) and train identically, momentum and weight decay included (docs/EXCITATION.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

Expert = Callable[[int, Tensor], Tensor]  # (expert index, its tokens (n, dim), n >= 0) -> outputs (n, dim)
# (tokens sorted by expert (N, dim), each expert's group size counts (E,) int64 on their device)
#   -> outputs (N, dim). Rows after the last group belong to no expert: their outputs may be anything
#   and their gradient is discarded (run_experts masks them).
Grouped = Callable[[Tensor, Tensor], Tensor]

# torch._grouped_mm's dtypes per device type (torch 2.14: aten's input checks and the CPU kernel;
# bfloat16 is the one with a fused kernel on CUDA)
GROUPED_MM_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.bfloat16),
}
# what torch.compile's meta kernel of _grouped_mm takes on every device (torch 2.14, _meta_registrations.py):
# eager CUDA also takes float32, a compiled graph does not
COMPILED_GROUPED_MM_DTYPES = (torch.bfloat16, torch.float16)
# On the CPU, grouped_mm runs every group in turn on whole-layer temporaries (each activation and gradient
# a fresh allocation of megabytes, the weight gradients 33 MB at 64 x 256 x 512): from this many rows per
# expert on average the loop, whose temporaries are one expert's and stay in cache, is faster (measured:
# 8-32 experts of 256 x 512 on 4,096 tokens, top-2, float32; docs/RESULTS.md "Where the MoE layer's CPU
# time goes"); below it, at 128, grouped_mm is.
CPU_LOOP_ROWS_PER_EXPERT = 256


def group_by_expert(indices: Tensor, num_experts: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Assignment order sorted by expert (flat positions into ``indices`` (T, k)) and each expert's
    group size ((E,) int64, on ``indices``' device: nothing is read on the host).

    The order's tail holds the padding tokens' assignments (``valid`` False), which belong to no group.
    """
    experts = indices.flatten()
    if valid is not None:
        experts = experts.masked_fill(~valid.repeat_interleave(indices.shape[1]), num_experts)
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=num_experts + 1)[:num_experts]
    return order, counts


def run_experts(
    x: Tensor, indices: Tensor, weights: Tensor, grouped: Grouped, num_experts: int, valid: Tensor | None = None
) -> Tensor:
    """``out[t] = sum_j weights[t, j] * expert(indices[t, j], x[t])`` for valid tokens, 0 for the others.

    ``x`` (T, dim), ``indices`` and ``weights`` (T, k), ``valid`` (T,) bool or None (all valid);
    ``grouped`` runs the experts on the sorted tokens (:func:`each_expert`, :func:`grouped_mlp`).
    """
    order, counts = group_by_expert(indices, num_experts, valid)
    tokens = order // indices.shape[1]
    routed = None if valid is None else valid.index_select(0, tokens)[:, None]
    inputs = x.index_select(0, tokens)
    if routed is not None:  # the rows after the groups: no gradient back to the padding tokens
        inputs = torch.where(routed, inputs, 0)
    y = grouped(inputs, counts)
    # those rows' outputs may be uninitialised memory: masked before anything multiplies them, or the
    # routing weights' gradient (upstream gradient times these outputs) would be 0 * NaN
    if routed is not None:
        y = torch.where(routed, y, 0)
    y = y * weights.flatten().index_select(0, order)[:, None].to(y.dtype)
    return y.new_zeros(x.shape[0], y.shape[1]).index_add_(0, tokens, y)


def each_expert(expert: Expert) -> Grouped:
    """The ``loop`` kernel: ``expert(e, its tokens)`` once per expert, an unused one on no tokens; the
    group sizes are read on the host once (one device sync)."""

    def run(x: Tensor, counts: Tensor) -> Tensor:
        sizes = counts.tolist()
        groups = x.split([*sizes, x.shape[0] - sum(sizes)])
        outputs = [expert(e, group) for e, group in enumerate(groups[:-1])]
        return torch.cat([*outputs, outputs[0].new_zeros(groups[-1].shape[0], outputs[0].shape[1])])

    return run


def _grouped_mlp(x: Tensor, counts: Tensor, w1: Tensor, w2: Tensor, activation: Callable[[Tensor], Tensor]) -> Tensor:
    if torch.is_autocast_enabled(x.device.type):  # autocast does not cast _grouped_mm's inputs; it does mm's
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w1, w2 = x.to(dtype), w1.to(dtype), w2.to(dtype)
    offsets = counts.cumsum(0, dtype=torch.int32)
    return torch._grouped_mm(activation(torch._grouped_mm(x, w1, offs=offsets)), w2, offs=offsets)


def _loop_mlp(x: Tensor, counts: Tensor, w1: Tensor, w2: Tensor, activation: Callable[[Tensor], Tensor]) -> Tensor:
    # One unbind per call: indexing w1[k] per expert would make every slice's backward
    # write a zero-filled gradient of the whole stacked tensor (E times the memory traffic).
    w1s, w2s = w1.unbind(0), w2.unbind(0)
    return each_expert(lambda k, h: activation(h @ w1s[k]) @ w2s[k])(x, counts)


# kernel name -> (tokens sorted by expert, counts, w1 (E, dim, hidden), w2 (E, hidden, dim), activation) -> outputs
KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor, Callable[[Tensor], Tensor]], Tensor]] = {
    "grouped_mm": _grouped_mlp,
    "loop": _loop_mlp,
}


def grouped_mm_takes(x: Tensor, w1: Tensor, w2: Tensor) -> bool:
    """Whether torch's grouped GEMM takes these operands: device type, compute dtype (under
    ``torch.compile``, what its meta kernel takes), contiguous weights, rows starting on 16-byte
    boundaries (``dim`` and ``hidden`` times the element size multiples of 16 bytes)."""
    device, compiling = x.device.type, torch.compiler.is_compiling()
    # traced on the CPU, no: the meta kernel refuses float32, the dtype CPU training runs in
    if device not in GROUPED_MM_DTYPES or (device == "cpu" and compiling):
        return False
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return (
        dtype in (COMPILED_GROUPED_MM_DTYPES if compiling else GROUPED_MM_DTYPES[device])
        and w1.dtype == w2.dtype == x.dtype
        and w1.is_contiguous()
        and w2.is_contiguous()
        and all(n * dtype.itemsize % 16 == 0 for n in w1.shape[1:])
    )


def kernel_for(x: Tensor, w1: Tensor, w2: Tensor) -> str:
    """``grouped_mm`` where torch's grouped GEMM takes these operands (:func:`grouped_mm_takes`) and, on
    the CPU, for fewer than :data:`CPU_LOOP_ROWS_PER_EXPERT` rows of ``x`` (the sorted assignments) per
    expert; else ``loop``."""
    if x.device.type == "cpu" and x.shape[0] >= CPU_LOOP_ROWS_PER_EXPERT * w1.shape[0]:
        return "loop"
    return "grouped_mm" if grouped_mm_takes(x, w1, w2) else "loop"


def grouped_mlp(
    w1: Tensor, w2: Tensor, activation: Callable[[Tensor], Tensor] = F.gelu, kernel: str | None = None
) -> Grouped:
    """Stacked two-layer MLP experts ``activation(x @ w1[e]) @ w2[e]`` (``w1`` (E, dim, hidden), ``w2``
    (E, hidden, dim)) as a :data:`Grouped` function; ``kernel`` (a :data:`KERNELS` name) or, by
    default, the one :func:`kernel_for` chooses for each call."""
    if kernel is not None and kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {sorted(KERNELS)} or None (chosen per call), got {kernel!r}")

    def run(x: Tensor, counts: Tensor) -> Tensor:
        if kernel == "grouped_mm" and not grouped_mm_takes(x, w1, w2):  # torch's own error names no kernel
            dtypes = "/".join(str(d).removeprefix("torch.") for d in GROUPED_MM_DTYPES.get(x.device.type, ()))
            raise ConfigError(
                f"kernel 'grouped_mm' cannot run these experts ({x.device.type}, {x.dtype}, w1 {tuple(w1.shape)}): "
                f"torch's grouped GEMM takes {dtypes or 'no dtype'} on {x.device.type}, contiguous weights whose "
                "rows are multiples of 16 bytes, and no torch.compile on the CPU; set kernel to 'loop', or None "
                "to choose per call"
            )
        return KERNELS[kernel or kernel_for(x, w1, w2)](x, counts, w1, w2, activation)

    return run
