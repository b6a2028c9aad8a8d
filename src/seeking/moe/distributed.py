"""MoE layers under ``DistributedDataParallel``: routing counts that stay each process's own.

DDP broadcasts every module buffer from rank 0 at the start of each forward that follows a
synchronised backward. With gradient accumulation written without ``no_sync()``, that is every
micro-batch after the first, so the other ranks' ``expert_counts`` would be replaced by rank 0's
before Excitation sums them over the processes (measured: [16, 15, 15, 10] read where the true sum
was [18, 16, 18, 12]). :func:`keep_counts_local` takes the counting buffers out of that broadcast.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from .protocol import expert_layers

# The protocol's per-process counting buffers (seeking.moe.protocol): expert_counts is summed over the
# processes by Excitation, last_counts describes this process's latest forward for the metrics.
COUNTING_BUFFERS = ("expert_counts", "last_counts")


def keep_counts_local(model: nn.Module) -> list[str]:
    """Exclude every expert layer's counting buffers (``expert_counts``, ``last_counts``) of ``model``
    from DDP's buffer broadcast; other buffers (BatchNorm statistics, ...) are broadcast as before.

    Call it on the plain model BEFORE ``DistributedDataParallel(model)``: DDP reads the list once, when
    it is built. Names DDP already ignores are kept. A model without expert layers is left as it is.

    Returns the names (as in ``model.named_buffers()``) that DDP now ignores for the counts.

    Raises ``ConfigError`` for a model already wrapped in DDP (the broadcast list is fixed by then).

    It uses ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``, the one per-buffer
    switch that torch (2.14) offers; the public ``broadcast_buffers=False`` / ``forward_sync_buffers``
    would stop the broadcast of every buffer, BatchNorm's included.
    """
    if isinstance(model, DistributedDataParallel):
        raise ConfigError(
            "keep_counts_local got a model already wrapped in DistributedDataParallel: call "
            "keep_counts_local(model) before DistributedDataParallel(model)"
        )
    names = _counting_buffers(model)
    if names:
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ()))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored | set(names)))
    return names


def broadcast_counts(model: nn.Module) -> list[str]:
    """The counting buffers that ``model``, a ``DistributedDataParallel``, broadcasts from rank 0 at its
    forwards (those :func:`keep_counts_local` was not called for); ``[]`` for any other module."""
    # broadcast_buffers: forward_sync_buffers since torch 2.13, read under its older name that every version has
    if not isinstance(model, DistributedDataParallel) or not model.broadcast_buffers:
        return []
    return [name for name in _counting_buffers(model.module) if name not in model.parameters_to_ignore]


def _counting_buffers(model: nn.Module) -> list[str]:
    """The names (as in ``model.named_buffers()``) of its expert layers' counting buffers."""
    counting = {
        id(buffer)
        for layer in expert_layers(model)
        for name in COUNTING_BUFFERS
        if isinstance(buffer := getattr(layer, name, None), Tensor)
    }
    return [name for name, buffer in model.named_buffers() if id(buffer) in counting]
