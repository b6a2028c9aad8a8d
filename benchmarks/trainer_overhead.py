"""Benchmark: the trainer's time per step against a minimal hand-written loop (issue 14).

Both arms train the same classical base run (condition ``never``): the trainer's training split,
batches, normalisation and augmentation, the same seeded model, SGD (Nesterov momentum, weight
decay) with the learning rate set every step, forward, cross-entropy, backward, step. The trainer's
time is its own ``summary["train_seconds"]`` (the step loop, tests excluded); the plain loop's is
the same number of steps. The plain loop reproduces the trainer's final weights exactly on the CPU
(checked on every run below, which stops at a difference, and in tests/test_trainer_overhead.py), so
both do the same work (on CUDA: within rounding, below).

Then the breakdown: the plain loop with each of the trainer's extras added alone (the per-step
grad norm and loss sync, the JSON step log, the disabled progress bar, the disabled autocast
context, the per-epoch checkpoint and epoch log), each extra's cost per call timed in isolation,
and a cProfile of one trainer run. Arms are interleaved (a rotated order per repeat); medians.

Both arms read one clock: on the CPU by default this thread's CPU time (``--clock cpu``: the
trainer's ``time.perf_counter`` is pointed at ``time.thread_time`` while it runs), since wall time on
a shared machine varies several-fold between repeats; ``--clock wall`` for a quiet machine.

``--device cuda`` (or ``cuda:N``) runs both arms there with the same work: the model, its optimizer
state, the training split (kept on the device, as the trainer keeps it) and the augmentation's
generator on the device, a batch drawn from that split per step. CUDA works asynchronously, so:

- the clock is wall time, the only one that counts the device's work (``--clock cpu`` is refused
  there: the host thread's CPU time leaves out the time it waits for the device);
- this script waits for the device (``torch.cuda.synchronize``) before each clock read of its own:
  the plain loop's per epoch, the whole ``train()`` call, the extras timed alone. The trainer reads
  its clock around each step and waits for the device once per step (``step_outcome``'s
  ``.tolist()``, before ``optimizer.step()``), so only each epoch's last optimizer step would still
  be queued at its last read; an optimizer hook waits for that one inside the step (once per epoch,
  nothing more), so ``train_seconds`` counts all the steps' device work, as the plain loop's does;
- the same-work check is a separate, untimed run of 2 steps of each arm before the timed ones (which
  also loads the kernels and sets cuDNN up): their weights must agree within 1e-5. CUDA kernels,
  cuDNN's backward convolutions among them, need not be deterministic, and rounding that differs
  grows chaotically over a run (on the CPU a 1e-7 relative change of the gradients moves these
  weights by 0.2 within 44 steps), so the timed runs' final weights are compared and printed but not
  checked; after 2 steps a 1e-5 change moves them by < 1e-6, a real difference (no weight decay,
  the smallest tried) by 2e-4;
- the cProfile of one trainer run times the host: a function's cumulative time includes the
  device's work only where it waits for it (``step_outcome``).

``--device cuda`` where CUDA is not available is refused before any work.

With ``--compile``, two more arms: the trainer with ``compile=True`` and the plain loop with its
forward and loss through ``torch.compile`` (the same backend, ``$SEEKING_COMPILE_BACKEND`` or
inductor). Both are run once before the timed repeats, so the repeats time compiled steps, not the
compilation (torch keeps the compiled code for new models of the same architecture).

    python benchmarks/trainer_overhead.py --clock cpu   # digits, ResNet-20, batch 64, 5 epochs, 1 thread
    python benchmarks/trainer_overhead.py --device cuda --compile   # on a GPU: wall clock, synchronised
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import itertools
import json
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from tqdm import tqdm

from seeking import TrainConfig, create_model, load_dataset, load_model, train
from seeking.data import ImageDataset, augment, normalize
from seeking.data.core import ImageData, run_splits
from seeking.data.transforms import EpochBatches
from seeking.training.checkpoint import rng_state, save_state
from seeking.training.distributed import Ranks
from seeking.training.engine import compile_backend, step_outcome
from seeking.training.optim import lr_factor

# What each clock reads (``--clock``), as ``time.perf_counter`` while the arms run.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass(frozen=True)
class DeviceKind:
    """What a kind of device (``torch.device(...).type``) changes in the timings."""

    clocks: tuple[str, ...]  # the clocks whose seconds count the work done there; the first is the default
    synchronize: Callable[[torch.device], None] | None  # waits for the device's queued work; None: none queues
    tolerance: float  # the largest parameter difference allowed between the plain loop's and the trainer's
    # None: the timed runs' final weights are compared; N: both arms' after a separate run of N steps,
    # before the timed runs (also their warm-up), as rounding that differs grows chaotically over a run
    check_steps: int | None
    missing: Callable[[torch.device], str | None]  # why the device is not here, or None
    name: Callable[[torch.device], str]  # the device, as the output names it


def cuda_missing(device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False)"
    if (device.index or 0) >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


DEVICES: dict[str, DeviceKind] = {
    "cpu": DeviceKind(
        clocks=("cpu", "wall"), synchronize=None, tolerance=0.0, check_steps=None, missing=lambda device: None, name=str
    ),
    "cuda": DeviceKind(
        clocks=("wall",),
        synchronize=torch.cuda.synchronize,
        tolerance=1e-5,  # kernels need not be deterministic: why 1e-5 after 2 steps, in the module docstring
        check_steps=2,
        missing=cuda_missing,
        name=lambda device: f"{device} ({torch.cuda.get_device_name(device)})",
    ),
}


def device_kind(device: torch.device) -> DeviceKind:
    return DEVICES[device.type]


def now(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has done its queued work (CUDA runs asynchronously)."""
    synchronize = device_kind(device).synchronize
    if synchronize is not None:
        synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def epoch_ends_waited(device: torch.device, per_epoch: int) -> Iterator[None]:
    """Within ``with``, on a device that queues work: after every ``per_epoch``-th optimizer step (the
    last of each epoch), wait for the device. The trainer reads its clock around each step and waits
    for the device once per step, before ``optimizer.step()`` (``step_outcome``'s ``.tolist()``): so
    only an epoch's last optimizer step would still be queued at its last read, and finish outside
    ``train_seconds`` (in the epoch's checkpoint). Waiting for it there costs one sync per epoch."""
    synchronize = device_kind(device).synchronize
    if synchronize is None:
        yield
        return
    steps = itertools.count(1)

    def wait(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if next(steps) % per_epoch == 0:
            synchronize(device)

    handle = register_optimizer_step_post_hook(wait)
    try:
        yield
    finally:
        handle.remove()


def eval_only_at_end() -> dict[str, int]:
    """The config field that turns periodic tests off (renamed ``eval_every_epochs`` in issue 14)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {"eval_every_epochs" if "eval_every_epochs" in names else "eval_every": 0}


@dataclass
class Setup:
    """What every arm shares: the configuration and the trainer's training split (on the run's
    device, as the trainer keeps it) and batch clock."""

    config: TrainConfig
    device: torch.device
    dataset: ImageDataset
    train: ImageData
    padding: int
    per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, config: TrainConfig) -> Setup:
        dataset = load_dataset(config.data, cache_dir=config.cache_dir)
        train_data, _ = run_splits(dataset, config.train_subset, config.test_subset, config.batch_size, config.seed)
        device = torch.device(config.device)
        train_data = ImageData(train_data.images.to(device), train_data.labels.to(device))
        per_epoch = len(train_data) // config.batch_size
        padding = config.crop_padding if config.crop_padding is not None else max(dataset.image_size) // 8
        warmup = round(config.warmup_epochs * per_epoch)
        return cls(config, device, dataset, train_data, padding, per_epoch, per_epoch * config.epochs, warmup)


@dataclass
class Loop:
    """The plain loop's state, which the extras read."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    stream: EpochBatches
    jitter: torch.Generator
    folder: Path
    step: int = 0
    epoch: int = 1
    loss_value: float = 0.0
    loss: torch.Tensor | None = None  # the last step's, for timing the extras alone


class Extra:
    """One piece of the trainer's work beyond the plain loop, added to it alone."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def forward(self) -> contextlib.AbstractContextManager:  # around the forward pass
        return contextlib.nullcontext()

    def step(self, loss: torch.Tensor, lr: float) -> None:  # after backward, before optimizer.step()
        pass

    def epoch_start(self) -> None:
        pass

    def epoch_end(self) -> None:
        pass

    def close(self) -> None:
        pass


class GradNormSync(Extra):
    """``step_outcome``: the gradients' finiteness, loss and stop flag in one tensor, one ``.tolist()`` sync."""

    def __init__(self, loop: Loop) -> None:
        super().__init__(loop)
        self.parameters = list(loop.model.parameters())  # listed once, as the engine lists them

    def step(self, loss: torch.Tensor, lr: float) -> None:
        self.loop.loss_value, _, _ = step_outcome(loss, self.parameters, Ranks(), False)


class LossItem(Extra):
    """``loss.item()`` alone: the least a loop that logs its loss does."""

    def step(self, loss: torch.Tensor, lr: float) -> None:
        self.loop.loss_value = loss.item()


class StepLog(Extra):
    """One JSON line per step to ``steps.jsonl``, as the trainer writes it."""

    def __init__(self, loop: Loop) -> None:
        super().__init__(loop)
        self.file = open(loop.folder / "steps.jsonl", "w")  # noqa: SIM115 (closed by close())

    def step(self, loss: torch.Tensor, lr: float) -> None:
        loop = self.loop
        entry = {"step": loop.step, "epoch": loop.epoch, "model": "base", "loss": loop.loss_value, "lr": lr}
        self.file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        self.file.close()


class ProgressBar(Extra):
    """A disabled tqdm per epoch and its ``set_postfix`` every step."""

    def epoch_start(self) -> None:
        self.bar = tqdm(range(1), disable=True, leave=False, desc=f"epoch {self.loop.epoch}")

    def step(self, loss: torch.Tensor, lr: float) -> None:
        self.bar.set_postfix(loss=f"{self.loop.loss_value:.4f}", p=f"{0.0:.3f}", refresh=False)


class Autocast(Extra):
    """The forward under ``torch.autocast(device, enabled=False)`` (the trainer's default, no ``--amp``)."""

    def forward(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.loop.device.type, dtype=torch.bfloat16, enabled=False)


class Checkpoint(Extra):
    """The end-of-epoch training state: models, optimizer, stream, generators, written atomically."""

    def epoch_end(self) -> None:
        loop = self.loop
        state = {
            "progress": {"step": loop.step, "epoch": loop.epoch},
            "models": {"base": loop.model.state_dict()},
            "optimizers": {"base": loop.optimizer.state_dict()},
            "stream": loop.stream.state_dict(),
            "jitter": loop.jitter.get_state(),
            "rng": rng_state(),
        }
        save_state(loop.folder / f"step-{loop.step:09d}.pt", state)


class EpochLog(Extra):
    """The end-of-epoch record: a JSON line to ``epochs.jsonl``, both logs flushed and fsynced
    (a checkpoint records their length) and the epoch's log line formatted."""

    def __init__(self, loop: Loop) -> None:
        super().__init__(loop)
        self.files = [open(loop.folder / n, "a") for n in ("epochs.jsonl", "steps.jsonl")]  # noqa: SIM115

    def epoch_end(self) -> None:
        record = {"epoch": self.loop.epoch, "steps": self.loop.step, "p": 0.0, "train_loss": self.loop.loss_value}
        self.files[0].write(json.dumps(record) + "\n")
        for file in self.files:
            file.flush()
            os.fsync(file.fileno())
        self.line = f"epoch {record['epoch']}  loss {record['train_loss']:.4f}  p {record['p']:.2f}"

    def close(self) -> None:
        for file in self.files:
            file.close()


class AllExtras(Extra):
    """Every extra of the trainer at once (``loss .item()`` is a reference, not one of them)."""

    def __init__(self, loop: Loop) -> None:
        super().__init__(loop)
        self.parts = [kind(loop) for kind in TRAINER_EXTRAS.values()]

    def forward(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        for part in self.parts:
            stack.enter_context(part.forward())
        return stack

    def step(self, loss: torch.Tensor, lr: float) -> None:
        for part in self.parts:
            part.step(loss, lr)

    def epoch_start(self) -> None:
        for part in self.parts:
            part.epoch_start()

    def epoch_end(self) -> None:
        for part in self.parts:
            part.epoch_end()

    def close(self) -> None:
        for part in self.parts:
            part.close()


# What the trainer (training/loop.py today) does beyond the plain loop, each added to it alone.
TRAINER_EXTRAS: dict[str, type[Extra]] = {
    "grad norm + loss sync (step_outcome)": GradNormSync,
    "JSON step log": StepLog,
    "progress bar (disabled tqdm)": ProgressBar,
    "autocast context (disabled)": Autocast,
    "checkpoint per epoch (not in train_seconds)": Checkpoint,
    "epoch log + fsync (not in train_seconds)": EpochLog,
}
# The arms of the breakdown: the extras, a reference, and all extras together.
ARMS: dict[str, type[Extra]] = {**TRAINER_EXTRAS, "loss .item() alone (reference)": LossItem, "all extras": AllExtras}


def build_model(setup: Setup) -> nn.Module:
    """The run's base model, seeded as the trainer seeds it, on the run's device."""
    config, dataset = setup.config, setup.dataset
    torch.manual_seed(config.seed)
    kwargs = {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}
    model = create_model(config.base, **kwargs, image_size=list(dataset.image_size), **config.model_kwargs)
    return model.to(setup.device)


def forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def plain_loop(setup: Setup, extra: type[Extra], folder: Path, compiled: bool = False) -> tuple[float, Loop]:
    """Train as the trainer does, by hand, with ``extra`` added (and with ``compiled``, the forward and
    loss through ``torch.compile``); returns the seconds of the step loops (what the trainer's
    ``train_seconds`` counts: not the work at the end of each epoch; the device's queued work
    included) and the loop's final state. As the trainer: the model, its optimizer state, the
    training split and the augmentation's generator on the run's device; the order of each epoch
    drawn on the CPU."""
    step_loss = torch.compile(forward_loss, backend=compile_backend()) if compiled else forward_loss
    config, dataset = setup.config, setup.dataset
    model = build_model(setup)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )
    stream = EpochBatches(setup.train, config.batch_size, torch.Generator().manual_seed(config.seed))
    jitter = torch.Generator(device=setup.device).manual_seed(config.seed)
    loop = Loop(model, optimizer, setup.device, stream, jitter, folder)
    hooks = extra(loop)
    seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        loop.epoch = epoch
        start = now(setup.device)
        hooks.epoch_start()
        for _ in range(setup.per_epoch):
            x, y = next(stream)
            x = augment(x, padding=setup.padding, hflip=dataset.hflip, generator=loop.jitter)
            x = normalize(x, dataset.mean, dataset.std)
            lr = config.lr * lr_factor(config.schedule, loop.step, setup.total, setup.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with hooks.forward():
                loss = step_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            hooks.step(loss, lr)
            optimizer.step()
            loop.step += 1
        seconds += now(setup.device) - start
        hooks.epoch_end()  # outside the clock, as the trainer's end-of-epoch work is outside its train_seconds
    hooks.close()
    loop.loss = loss
    return seconds, loop


@contextlib.contextmanager
def clock(kind: str) -> Iterator[None]:
    """Within ``with``, ``time.perf_counter`` (the trainer's clock and this script's) reads ``kind``:
    ``wall`` as it is, or ``cpu``: this thread's CPU time (``time.thread_time``), which the other
    work of a shared machine does not inflate (one torch thread computes in the calling thread)."""
    wall = time.perf_counter
    time.perf_counter = CLOCKS[kind]
    try:
        yield
    finally:
        time.perf_counter = wall


def trainer_run(setup: Setup, folder: Path, compiled: bool = False) -> tuple[float, float, dict[str, Any]]:
    """The trainer's ``train_seconds`` (with ``compiled``, of the run with ``compile=True``), the time
    of the whole ``train()`` call, and its summary; the device's queued work included in both."""
    config = dataclasses.replace(setup.config, compile=True) if compiled else setup.config
    start = now(setup.device)
    with epoch_ends_waited(setup.device, setup.per_epoch):
        summary = train(config, folder, progress=False, log=lambda line: None).summary
    whole = now(setup.device) - start
    if summary["train_seconds"] > whole:  # read on another clock than this script's
        raise SystemExit(
            f"the trainer's train_seconds ({summary['train_seconds']:.3f}) exceed its whole call ({whole:.3f}): "
            "it does not time with time.perf_counter, so --clock cpu cannot reach it; use --clock wall"
        )
    return summary["train_seconds"], whole, summary


def weight_difference(model: nn.Module, saved: Path) -> float:
    """Largest absolute difference between ``model``'s parameters and those of a saved model file
    (not the BatchNorm statistics: the trainer re-estimates those before saving)."""
    theirs = dict(load_model(saved)[0].named_parameters())
    return max((p.detach().cpu() - theirs[n].detach()).abs().max().item() for n, p in model.named_parameters())


def difference_after(setup: Setup, steps: int, folder: Path) -> float:
    """The largest parameter difference between the plain loop and the trainer after ``steps`` steps
    (one epoch of that many batches, or of all the training split's when it has fewer)."""
    batch = setup.config.batch_size
    config = dataclasses.replace(setup.config, epochs=1, train_subset=min(steps, setup.per_epoch) * batch)
    short = Setup.of(config.validate())
    summary = trainer_run(short, folder / "run")[2]
    loop = plain_loop(short, Extra, folder)[1]
    return weight_difference(loop.model, folder / "run" / summary["models"]["base"]["checkpoint"])


def same_work(difference: float, kind: DeviceKind, device: torch.device, what: str) -> str:
    """``what``'s line of the output; an ``AssertionError`` if the arms' weights differ by more than the
    device allows: their times would compare different work."""
    line = f"{what}: largest parameter difference {difference:.3g} (allowed on {device.type}: {kind.tolerance:g})"
    if difference > kind.tolerance:
        raise AssertionError(f"the plain loop does not do the trainer's work: {line}")
    return line


def micro(extra: type[Extra], loop: Loop, calls: int, folder: Path) -> tuple[float, float]:
    """Median microseconds of ``extra``'s per-step work (forward context and step hook) and of its
    per-epoch work (epoch end and start), each timed alone on the loop's final state (its loss and
    gradients still in place)."""
    loop = dataclasses.replace(loop, folder=folder)
    hooks = extra(loop)
    hooks.epoch_start()
    steps, epochs = [], []
    for call in range(calls):
        start = now(loop.device)
        with hooks.forward():
            pass
        hooks.step(loop.loss, 0.1)
        steps.append(now(loop.device) - start)
        if call % 50 == 0:
            start = now(loop.device)
            hooks.epoch_end()
            hooks.epoch_start()
            epochs.append(now(loop.device) - start)
    hooks.close()
    return 1e6 * statistics.median(steps), 1e6 * statistics.median(epochs)


# Where the trainer's time goes in the profile: label -> (file name ending, function name).
PROFILED = {
    "train() (whole call)": ("training/loop.py", "train"),
    "load_dataset": ("data/load.py", "load_dataset"),
    "FLOP count + probe": ("training/loop.py", "probe_models"),
    "backward": ("torch/_tensor.py", "backward"),
    "optimizer step": ("torch/optim/sgd.py", "step"),
    "step_outcome": ("training/engine.py", "step_outcome"),
    "augment": ("data/transforms.py", "augment"),
    "normalize": ("data/transforms.py", "normalize"),
    "next batch": ("data/transforms.py", "__next__"),
    "lr_factor": ("training/optim.py", "lr_factor"),
    "zero_grad": ("torch/optim/optimizer.py", "zero_grad"),
    "JSON step log": ("training/engine.py", "write"),
    "tqdm set_postfix": ("tqdm/std.py", "set_postfix"),
    "checkpoints": ("training/engine.py", "save"),
    "tests (BN re-estimation + evaluate)": ("training/loop.py", "test"),
    "final model files": ("seeking/model_file.py", "save_model"),
}


def profile_rows(setup: Setup, folder: Path) -> tuple[float, list[tuple[str, int, float]]]:
    """cProfile of one trainer run: its ``train_seconds`` under the profiler, and (label, calls,
    cumulative seconds) of each entry of ``PROFILED`` and of the model's forward (its own method:
    the blocks' forwards inside it are not counted twice)."""
    profiler = cProfile.Profile()
    seconds = profiler.runcall(trainer_run, setup, folder)[0]
    forward = type(build_model(setup)).forward.__code__
    stats = pstats.Stats(profiler).stats
    model = stats.get((forward.co_filename, forward.co_firstlineno, forward.co_name), (0, 0, 0.0, 0.0))
    found = {label: (0, 0.0) for label in PROFILED} | {"model forward (training, probe, tests)": model[1:4:2]}
    for (file, _, name), (_, calls, _, cumulative, _) in stats.items():
        for label, (ending, function) in PROFILED.items():
            if file.replace("\\", "/").endswith(ending) and name == function:
                found[label] = (found[label][0] + calls, found[label][1] + cumulative)
    return seconds, [(label, calls, cumulative) for label, (calls, cumulative) in found.items()]


def checked_device(parser: argparse.ArgumentParser, text: str) -> tuple[torch.device, DeviceKind]:
    """``--device``, and its kind; a device this script does not know, or that is not here, is the
    parser's error (exit 2), before any work."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICES:
        parser.error(
            f"--device {text}: not a device this benchmark runs on; use one of {', '.join(DEVICES)} (or cuda:N)"
        )
    missing = DEVICES[device.type].missing(device)
    if missing is not None:
        parser.error(f"--device {text}: {missing}; use --device cpu")
    return device, DEVICES[device.type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--micro-calls", type=int, default=500)
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        help="what both arms' seconds count: this thread's CPU time (the CPU's default: steady on a shared "
        "machine) or wall time (the default, and the only clock, on CUDA)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: both arms run there")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of one trainer run")
    parser.add_argument("--compile", action="store_true", help="also time the trainer and the plain loop compiled")
    args = parser.parse_args()
    device, kind = checked_device(parser, args.device)
    if args.clock is not None and args.clock not in kind.clocks:
        parser.error(
            f"--clock {args.clock} does not count the work done on {device.type} (this thread's CPU time leaves "
            f"out the time it waits for the device): use --clock {kind.clocks[0]}, the default there"
        )
    chosen = args.clock or kind.clocks[0]
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=args.data,
        base=args.model,
        condition="never",
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        **eval_only_at_end(),
    )
    setup = Setup.of(config.validate())
    steps = setup.total
    print(
        f"torch {torch.__version__}, device {kind.name(device)}, {torch.get_num_threads()} thread(s); {args.data}, "
        f"{args.model}, batch {args.batch_size}, {args.epochs} epochs x {setup.per_epoch} steps = {steps} steps; "
        f"{chosen} clock, medians of {args.repeats} interleaved repeats"
    )
    compiled = {"trainer --compile": "trainer", "plain --compile": "plain"} if args.compile else {}
    arms = ["trainer", "plain", *ARMS, *compiled]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    walls, tests = [], []
    checked = []  # the lines of the same-work checks
    with tempfile.TemporaryDirectory() as scratch, clock(chosen):
        if kind.check_steps is not None:
            difference = difference_after(setup, kind.check_steps, Path(scratch) / "check")
            what = f"plain loop vs the trainer after {kind.check_steps} steps (untimed runs)"
            checked.append(same_work(difference, kind, device, what))
        if compiled:  # compile once, untimed: the repeats reuse the compiled code
            warm = trainer_run(setup, Path(scratch) / "warm", compiled=True)[0]
            cold = plain_loop(setup, Extra, Path(scratch), compiled=True)[0]
            print(f"first (compiling) runs: trainer {warm:.1f} s, plain loop {cold:.1f} s")
        for repeat in range(args.repeats):
            shift = repeat % len(arms)  # a rotated order: no arm always runs first or after the same one
            for arm in arms[shift:] + arms[:shift]:
                folder = Path(scratch) / f"{repeat}-{arms.index(arm)}"
                folder.mkdir()
                if arm == "trainer":
                    seconds, wall, summary = trainer_run(setup, folder / "run")
                    walls.append(wall)
                    tests.append(summary["eval_seconds"])
                    trained = folder / "run" / summary["models"]["base"]["checkpoint"]
                elif arm == "trainer --compile":
                    seconds = trainer_run(setup, folder / "run", compiled=True)[0]
                elif arm == "plain --compile":
                    seconds = plain_loop(setup, Extra, folder, compiled=True)[0]
                else:
                    seconds, loop = plain_loop(setup, ARMS.get(arm, Extra), folder)
                    if arm == "plain":
                        plain = loop
                times[arm].append(seconds)
            if repeat == 0:  # the same work: the plain loop ends on the trainer's weights
                difference = weight_difference(plain.model, trained)
                what = "plain loop vs the trainer's saved weights"
                if kind.check_steps is None:  # stop at once if the times would compare different work
                    checked.append(same_work(difference, kind, device, what))
                else:
                    checked.append(
                        f"{what}: largest parameter difference {difference:.3g} (not checked on "
                        f"{device.type}: rounding that differs between the runs grows over a run)"
                    )
        medians = {arm: statistics.median(values) for arm, values in times.items()}
        trainer, base = medians["trainer"], medians["plain"]
        print("\n" + "\n".join(checked))
        print("\n| arm | seconds (median) | ms per step | ratio plain / arm | all repeats (s) |")
        print("|---|---|---|---|---|")
        for arm in ("plain", "trainer", *compiled):
            shown = ", ".join(f"{t:.3f}" for t in times[arm])
            per_step = 1e3 * medians[arm] / steps
            print(f"| {arm} | {medians[arm]:.3f} | {per_step:.2f} | {base / medians[arm]:.3f} | {shown} |")
        if compiled:
            ratio = medians["plain --compile"] / medians["trainer --compile"]
            speed = medians["trainer --compile"] / trainer
            print(f"\ncompiled: ratio plain / trainer {ratio:.3f}; compiled trainer / eager trainer {speed:.3f}")
        print(
            f"\nratio plain / trainer: {base / trainer:.3f} (target >= 0.98); gap {1e3 * (trainer - base) / steps:.2f} "
            f"ms per step. The whole train() call: {statistics.median(walls):.2f} s, of which tests "
            f"{statistics.median(tests):.2f} s"
        )
        calls = {name: micro(extra, plain, args.micro_calls, Path(scratch)) for name, extra in ARMS.items()}
        print(
            "\n| plain loop + | seconds (median) | added ms per step | share of the trainer's gap "
            "| alone: us per step | alone: ms per epoch | alone: ms per run |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in ARMS:
            added = medians[name] - base
            per_step, per_epoch = calls[name]
            run_ms = (per_step * steps + per_epoch * args.epochs) / 1e3
            print(
                f"| {name} | {medians[name]:.3f} | {1e3 * added / steps:+.3f} | {100 * added / (trainer - base):+.0f}% "
                f"| {per_step:.1f} | {per_epoch / 1e3:.2f} | {run_ms:.1f} |"
            )
        if not args.no_profile:
            profiled_seconds, rows = profile_rows(setup, Path(scratch) / "profiled")
            print(f"\ncProfile of one trainer run (train_seconds under the profiler: {profiled_seconds:.2f} s)")
            if kind.synchronize is not None:
                print(
                    f"(host times: on {device.type} a function's time includes the device's work only where it waits)"
                )
            print("\n| where | calls | cumulative s | ms per call |")
            print("|---|---|---|---|")
            for label, count, cumulative in rows:
                print(f"| {label} | {count} | {cumulative:.3f} | {1e3 * cumulative / max(count, 1):.3f} |")


if __name__ == "__main__":
    main()
