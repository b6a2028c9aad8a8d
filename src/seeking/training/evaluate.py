"""Test-set evaluation of one model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import ImageData, ImageDataset, batches, normalize
from ..errors import DataError


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy (percent) and mean cross-entropy of ``model`` in eval mode; restores its mode.
    ``progress`` shows a progress bar (on stderr)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    total = -(-len(data) // batch_size)
    for images, labels in tqdm(
        batches(data, batch_size, shuffle=False),
        total=total,
        desc="testing",
        unit="batch",
        leave=False,
        disable=not progress,
    ):
        x = normalize(images.to(device), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    return {"accuracy": 100.0 * correct / len(data), "loss": loss_sum / len(data)}


def check_model_data(meta: dict[str, Any], dataset: ImageDataset) -> list[str]:
    """Whether ``dataset`` suits the model file whose metadata is ``meta`` (as
    :func:`seeking.model_file.read_model_file` returns it). Raises :class:`DataError` when the model
    cannot take the data (other image channels; labels beyond its outputs); returns warnings when the
    classes differ from those it was trained on (fewer, or other names), since the accuracy then
    compares labels that need not mean what the model's outputs mean."""
    kwargs, extra = meta["model_kwargs"], meta["extra"]
    trained_on = f"it was trained on {extra['dataset']!r}" if "dataset" in extra else "use its training data"
    channels = kwargs.get("in_channels")
    if channels is not None and channels != dataset.in_channels:
        raise DataError(
            f"{meta['model']} takes {channels}-channel images but {dataset.name!r} has {dataset.in_channels}-channel "
            f"images; {trained_on}"
        )
    classes = kwargs.get("num_classes")
    if classes is not None and dataset.num_classes > classes:
        raise DataError(
            f"{meta['model']} has {classes} classes but {dataset.name!r} has {dataset.num_classes}: labels beyond "
            f"the model's outputs cannot be scored; {trained_on}"
        )
    if classes is not None and dataset.num_classes < classes:
        return [
            f"{meta['model']} has {classes} classes but {dataset.name!r} has {dataset.num_classes}: the accuracy "
            f"compares its labels 0..{dataset.num_classes - 1} with the model's first classes, which may mean "
            f"other things ({trained_on})"
        ]
    names = extra.get("classes")
    if names is not None and len(names) == dataset.num_classes and list(names) != list(dataset.classes):
        label = next(i for i, (a, b) in enumerate(zip(names, dataset.classes, strict=True)) if a != b)
        return [
            f"the classes of {dataset.name!r} are not those {meta['model']} was trained on (label {label} is "
            f"{dataset.classes[label]!r} here, {names[label]!r} in training): the accuracy compares labels that "
            "may mean other things"
        ]
    return []
