"""Several processes under ``torchrun``: joining the process group, sharding batches, agreeing.

Every rank builds the same models from the same seeds and draws the same global batch from the same
generators; rank ``r`` of ``W`` trains on rows ``r*B/W .. (r+1)*B/W`` of it, and DDP averages the
gradients, so a step is the step a single process would take on the global batch (up to float
rounding). Decisions that must be the same everywhere (the motivation condition, skipping a
non-finite step, stopping on Ctrl-C) are made from values all-reduced in one call per step.
Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..moe.distributed import keep_counts_local


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank and the number of processes (1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    def speaker(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` on rank 0, a log that says nothing elsewhere: one process speaks."""
        return log if self.main else lambda line: None

    def barrier(self) -> None:
        """Wait until every process gets here (nothing to wait for in a single process)."""
        if self.world > 1:
            dist.barrier()

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (all of it in a single process)."""
        n = batch.shape[0] // self.world
        return batch[self.rank * n : (self.rank + 1) * n]


def join(device: str, batch_size: int) -> tuple[Ranks, torch.device]:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE`` > 1), with NCCL
    for CUDA devices and gloo otherwise; returns this process's ranks and its device (``cuda`` becomes
    ``cuda:LOCAL_RANK``). Without torchrun: ``Ranks()`` and ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), torch.device(device)
    if batch_size % world:
        raise ConfigError(
            f"batch_size {batch_size} (the global batch) must be a multiple of the {world} processes; "
            f"use --batch-size {batch_size - batch_size % world or world}"
        )
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), target


def wrap(model: nn.Module, ranks: Ranks, device: torch.device, *, find_unused: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself; the MoE
    layers' routing counts stay each process's own (:func:`seeking.moe.keep_counts_local`)."""
    if ranks.world == 1:
        return model
    keep_counts_local(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def sum_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``values`` summed over all processes (``values`` itself in a single process)."""
    if ranks.world > 1:
        dist.all_reduce(values)
    return values
