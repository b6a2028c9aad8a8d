"""Helpers shared by the test modules."""

import json
import math
import os
import signal
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


class Crash(Exception):
    """Stands for a kill: raised by a step hook (:func:`crash_at`)."""


def counting(action):
    """A step hook (seeking.training.engine.register_step_hook) that calls ``action(call, loss)`` with
    the number of its call (from 0, over every run of the process) and returns what it returns."""
    calls = [0]

    def hook(step, loss):
        calls[0] += 1
        return action(calls[0] - 1, loss)

    return hook


def poisoning(calls):
    """The loss of the chosen steps (calls of the hook, from 0) is NaN, as a diverging model's would be."""
    chosen = set(calls)
    return counting(lambda call, loss: loss * math.nan if call in chosen else None)


def crash_at(call):
    """The run dies at its ``call``-th step (from 0), after the backward pass, as a kill would."""

    def die(n, loss):
        if n == call:
            raise Crash

    return counting(die)


def signal_at(call, signum=signal.SIGINT):
    """The process receives ``signum`` during its ``call``-th step (from 1), as from Ctrl-C."""
    return counting(lambda n, loss: os.kill(os.getpid(), signum) if n + 1 == call else None)


def json_lines(path):
    return [without_timings(json.loads(line)) for line in Path(path).read_text().splitlines()]


def assert_same_run(expected, actual):
    """Two finished run folders hold bit-identical models and the same logs and results."""
    assert run_differences(expected, actual) == []
