"""Helpers shared by the test modules (and by benchmarks/resume_stress.py, which puts tests/ on its path)."""

import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import safetensors
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from seeking import ConsecutiveDecrease, Motivator
from seeking.runs import CHECKPOINTS, EXCITE_RUNS, SUMMARY


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def motivated_steps(base, large, sync, *, steps, shape, batchnorm="separate", optimizer=sgd, before_step=None):
    """Train the pair for ``steps`` batches of random ``shape`` images (k = 1), each model with its own
    ``optimizer(model)``, calling ``before_step(step, motivator)`` first if given; returns the finished Motivator."""
    motivator = Motivator(
        base, large, ConsecutiveDecrease(k=1), optimizer(base), optimizer(large), sync=sync, batchnorm=batchnorm
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        if before_step is not None:
            before_step(step, motivator)
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


def without_timings(value: Any) -> Any:
    """JSON data without the fields that measure time (``*seconds*``, ``*_ms``), which differ between runs."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k and not k.endswith("_ms")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def _read_json(path: Path) -> Any:
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)


def _same_model_file(a: Path, b: Path) -> bool:
    """Same tensors bit for bit and same metadata. (Not the same bytes: safetensors writes the metadata
    in an order that changes from process to process.)"""
    files = [safetensors.safe_open(path, "pt") for path in (a, b)]
    if files[0].metadata() != files[1].metadata() or set(files[0].keys()) != set(files[1].keys()):
        return False
    for key in files[0].keys():  # noqa: SIM118 (safe_open objects are not mappings)
        x, y = (f.get_tensor(key).reshape(-1) for f in files)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            return False
    return True


def run_differences(expected: str | os.PathLike, actual: str | os.PathLike) -> list[str]:
    """How two finished run folders differ, apart from time measurements: the model files bit for bit,
    the logs, ``summary.json`` and Excitation's ``runs/*.json`` (tables and aggregates derive from
    these). Works on comparison folders too (one run folder per arm). Empty when they are the same."""
    expected, actual = Path(expected), Path(actual)
    differences = []
    for path in sorted(expected.rglob("*")):
        name = path.relative_to(expected)
        compared = path.suffix in (".safetensors", ".jsonl") or name.name == SUMMARY or EXCITE_RUNS in name.parts
        if not compared or CHECKPOINTS in name.parts or not path.is_file():
            continue
        other = actual / name
        if not other.is_file():
            differences.append(f"{name}: missing")
        elif path.suffix == ".safetensors":
            if not _same_model_file(path, other):
                differences.append(f"{name}: the weights differ")
        elif without_timings(_read_json(path)) != without_timings(_read_json(other)):
            differences.append(f"{name}: the content differs")
    return differences


def run_processes(worker, *args, nprocs=2, timeout=120.0):
    """Run ``worker(rank, *args)`` in ``nprocs`` processes; a worker's error is raised here, and a run
    that outlives ``timeout`` seconds (a hung collective) is killed and raised as ``TimeoutError``,
    so that a test never hangs. Workers join their group by a file (``file://``), never by a port."""
    # fork starts in milliseconds; spawn would re-import torch in each process (seconds on a small machine)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nprocs} processes still running after {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


WORDS = [
    "to",
    "be",
    "or",
    "not",
    "to",
    "be",
    "that",
    "is",
    "the",
    "question",
    "whether",
    "tis",
    "nobler",
    "in",
    "the",
    "mind",
]


def write_words(path: Path, characters: int) -> Path:
    """A small text file of seeded random words from :data:`WORDS`, cut to ``characters``."""
    rng = random.Random(0)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(400))[:characters])
    return path
