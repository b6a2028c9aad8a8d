"""Helpers shared by the test modules."""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from seeking import ConsecutiveDecrease, Motivator
from seeking.training.resume import run_differences, without_timings


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def motivated_steps(base, large, sync, *, steps, shape, batchnorm="separate"):
    """Train the pair for ``steps`` batches of random ``shape`` images (k = 1); returns the finished Motivator."""
    motivator = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large), sync=sync, batchnorm=batchnorm)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(*shape, generator=gen), torch.randint(0, 10, (shape[0],), generator=gen)
        model, opt = motivator.select()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        motivator.observe(loss)
    motivator.finish()
    return motivator


class PoisonedLoss:
    """Stands in for ``torch.nn.functional`` in a training loop: the loss of chosen calls is NaN."""

    def __init__(self, poisoned):
        self.poisoned, self.calls = set(poisoned), 0

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, target):
        loss = torch.nn.functional.cross_entropy(logits, target)
        self.calls += 1
        return loss * math.nan if self.calls - 1 in self.poisoned else loss


def json_lines(path):
    return [without_timings(json.loads(line)) for line in Path(path).read_text().splitlines()]


def assert_same_run(expected, actual):
    """Two finished run folders hold bit-identical models and the same logs and results."""
    assert run_differences(expected, actual) == []
