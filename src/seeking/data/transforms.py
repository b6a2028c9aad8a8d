"""Batching, augmentation and normalisation of whole batches: tensor ops, no per-image Python."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from seeking.data.core import ImageData
from seeking.errors import DataError


def batches(
    data: ImageData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) batches; every example once, in random order if ``shuffle``."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    n = len(data)
    stop = n - n % batch_size if drop_last else n
    order = None
    if shuffle:
        device = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=device).to(data.labels.device)
    for start in range(0, stop, batch_size):
        if order is None:  # plain slices are views: no copy
            yield data.images[start : start + batch_size], data.labels[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield data.images[index], data.labels[index]


class EpochBatches:
    """Full shuffled batches epoch after epoch (the last partial batch of each epoch is dropped).

    The same batches as ``batches(data, batch_size, shuffle=True, generator=generator,
    drop_last=True)`` called once per epoch, but resumable: the state is the generator's state at
    the start of the current epoch and how many of its batches were taken, so ``load_state_dict``
    redraws that epoch's order and goes on from there.
    """

    def __init__(self, data: ImageData, batch_size: int, generator: torch.Generator) -> None:
        if not 1 <= batch_size <= len(data):
            raise DataError(f"batch_size {batch_size} must lie in 1..{len(data)} (the number of examples)")
        self.data, self.batch_size, self.generator = data, batch_size, generator
        self.per_epoch = len(data) // batch_size
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_start = self.generator.get_state()
        self.order = torch.randperm(len(self.data), generator=self.generator, device=self.generator.device)
        self.order = self.order.to(self.data.labels.device)
        self.taken = 0

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.taken == self.per_epoch:
            self._new_epoch()
        index = self.order[self.taken * self.batch_size : (self.taken + 1) * self.batch_size]
        self.taken += 1
        return self.data.images[index], self.data.labels[index]

    def state_dict(self) -> dict[str, object]:
        return {"epoch_start": self.epoch_start, "taken": self.taken}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.generator.set_state(state["epoch_start"])
        self._new_epoch()
        self.taken = int(state["taken"])


def augment(
    images: torch.Tensor,
    *,
    padding: int,
    hflip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crops of the zero-padded images and random mirror images, for a whole batch.

    Each image gets its own offset in ``0..2*padding`` per axis and, if ``hflip``, a mirror with
    probability 1/2. Crop and mirror are one gather: a mirrored image reads its window's columns
    backwards. Works on any dtype and device; returns ``images`` itself when there is nothing to do.
    """
    if images.dim() != 4:
        raise DataError(f"augment needs images shaped (N, C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise DataError(f"padding must be 0 or more, got {padding}")
    if padding == 0 and not hflip:
        return images
    n, c, h, w = images.shape
    device = generator.device if generator is not None else images.device
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))
        rows = rows + torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
        cols = cols + torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    if hflip:
        mirror = torch.rand(n, 1, generator=generator, device=device) < 0.5
        # the window starts at cols[:, :1]; reading it backwards mirrors the crop
        cols = torch.where(mirror, cols.flip(1), cols)
    rows, cols = rows.to(images.device), cols.to(images.device)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 ``(x - mean) / std`` per channel, on the images' device.

    uint8 images are scaled to [0, 1] first; floating images are taken to be in [0, 1] already.
    """
    if images.dim() != 4 or len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise DataError(
            f"normalize needs images shaped (N, C, H, W) and C means and stds, got images "
            f"{tuple(images.shape)} with {len(mean)} means and {len(std)} stds"
        )
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (x - mean_t) / std_t
