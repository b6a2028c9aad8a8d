"""Test-set evaluation of one model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import ImageData, batches, normalize


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
