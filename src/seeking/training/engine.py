"""The training engine: the one step loop under every trainer.

A trainer (``seeking train``, ``seeking excite``) builds a :class:`Task` and hands it to
:class:`Engine`, which owns what every run does alike, step by step:

1. the next batch from the task (this process's shard of the global batch);
2. the learning rate of the step (a schedule of the global step) on the plan's optimizer;
3. the forward pass and loss under autocast (bfloat16 when ``amp``), through ``torch.compile`` when
   ``compile`` (see :func:`compiled_loss`), and the backward pass;
4. one all-reduce of the loss, the gradients' norm and the stop flag (:func:`step_outcome`), so every
   process decides alike; a non-finite step is skipped (the task drops what it recorded, e.g. routing
   counts), ``max_nonfinite`` in a row stop the run;
5. at each period's end (an epoch, an evaluation interval) the task's report, then a checkpoint; a
   checkpoint also every ``checkpoint_every`` steps and when a stop is requested (Ctrl-C, SIGTERM).

What a checkpoint holds is stated once, in :meth:`Engine.save`: the seeking version and the run's
configuration (checked on resume), the task's :meth:`Task.parts` (models, optimizers, plan, data and
its generators, logs, the task's own record), the engine's :class:`Counters` (``progress``) and torch's
global random state (``rng``), each saved by its own ``state_dict`` (:class:`Parts`).

Faults are injected through :func:`register_step_hook` (like ``nn.Module``'s global hooks): tests
poison a step's loss, kill a run or send a signal at a chosen step without patching module globals.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError, Diverged
from ..motivation.plan import TrainingPlan
from ..version import __version__
from .checkpoint import Checkpoints, RunInterrupted, StopRequests, check_state, fitting, rng_state, set_rng_state
from .distributed import Ranks, sum_over_ranks
from .optim import lr_factor


class Stateful(Protocol):
    """What a checkpoint is made of: anything with ``state_dict`` / ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Parts(dict):
    """Named :class:`Stateful` parts, itself Stateful: ``state_dict`` maps each name to its part's
    state; ``load_state_dict`` loads each part from its name (a missing name is a ``KeyError``)."""

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.items():
            part.load_state_dict(state[name])


class GeneratorState:
    """A ``torch.Generator`` as a Stateful part (its state is a CPU ByteTensor)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"])


class GlobalRandomState:
    """torch's global random state (CPU, and each CUDA device once CUDA is in use) as a Stateful part."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class Record:
    """A dataclass of plain values as a Stateful part (its fields are its state)."""

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass
class Counters(Record):
    """The engine's counters, as a checkpoint holds them."""

    step: int = 0  # steps done, skipped ones included
    skipped: int = 0  # non-finite steps, all of the run
    nonfinite_run: int = 0  # non-finite steps in a row
    loss_sum: float = 0.0  # finite training losses of the period in progress
    loss_count: int = 0
    train_seconds: float = 0.0  # in steps (not tests, not checkpoints)
    optimizer_seconds: float = 0.0  # in optimizer.step()
    wall_seconds: float = 0.0  # everything since the run started

    @property
    def mean_loss(self) -> float:
        """The mean finite training loss of the period in progress (NaN if none was finite)."""
        return self.loss_sum / self.loss_count if self.loss_count else math.nan


class Task(Protocol):
    """What a trainer supplies to the :class:`Engine`.

    ``plan`` chooses the model and optimizer of each step (a Motivator, or one model alone);
    ``nets`` is each plan role's module as the step calls it (DistributedDataParallel under torchrun).
    """

    plan: TrainingPlan
    nets: dict[str, nn.Module]
    name: str | None  # the run's name in messages ("zero_sum seed 0"); None for a run alone

    def next_batch(self) -> tuple[Any, torch.Tensor]:
        """This process's inputs and targets for the next step."""

    def loss(self, net: nn.Module, model: nn.Module, inputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(reported, minimised)``: the loss the run reports and the condition reads, and the one to
        backpropagate (the reported one plus any auxiliary loss)."""

    def skip(self) -> None:
        """A step was skipped (non-finite): forget what its forward pass recorded."""

    def after_step(self, step: int, role: str, loss: float, lr: float, finite: bool) -> None:
        """Per-step bookkeeping (logs, FLOPs) of step ``step`` (0-based), which trained ``role``."""

    def end_period(self, counters: Counters) -> dict[str, str]:
        """A period ended after ``counters.step`` steps: evaluate, log. Returns what the progress bar shows."""

    def parts(self) -> Parts:
        """The task's Stateful parts: what a checkpoint holds besides the engine's counters."""


StepHook = Callable[[int, torch.Tensor], torch.Tensor | None]
_step_hooks: OrderedDict[int, StepHook] = OrderedDict()  # weakly referenced by the handles, as torch's


def register_step_hook(hook: StepHook) -> RemovableHandle:
    """Call ``hook(step, loss)`` in every training step of every run in this process, after the
    backward pass and before the step's outcome is decided; a tensor it returns replaces the loss
    that the outcome (finite or not), the logs and the condition read. ``step`` counts the run's
    steps from 0. For faults in tests (a NaN loss, a crash, a signal) and for instrumentation.
    Returns a handle whose ``remove()`` unregisters it."""
    handle = RemovableHandle(_step_hooks)
    _step_hooks[handle.id] = hook
    return handle


def step_outcome(
    loss: torch.Tensor, parameters: list[torch.Tensor], ranks: Ranks, stop: bool
) -> tuple[float, bool, bool]:
    """The loss averaged over processes, whether it and every gradient of ``parameters`` are finite,
    and whether any process was asked to stop: one all-reduce and one host sync, so every rank decides
    alike. The gradients are checked as ``torch.amp.GradScaler`` checks them (one fused pass that
    reads each gradient once and multiplies it by 1, which leaves it bit for bit as it was)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    nonfinite = loss.new_zeros(1, dtype=torch.float32)
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, nonfinite, torch.ones_like(nonfinite))
    flag = torch.ones(1, device=loss.device) if stop else torch.zeros(1, device=loss.device)
    values = sum_over_ranks(torch.cat([loss.detach().float().reshape(1), nonfinite, flag]), ranks)
    loss_sum, nonfinite_sum, stops = values.tolist()
    loss_value = loss_sum / ranks.world
    return loss_value, math.isfinite(loss_value) and nonfinite_sum == 0, stops > 0


COMPILE_BACKEND = "SEEKING_COMPILE_BACKEND"  # the environment variable that chooses torch.compile's backend


def compile_backend() -> str:
    """The backend of ``--compile``: ``$SEEKING_COMPILE_BACKEND``, else torch's default ``inductor`` (which
    needs a C++ compiler on CPU and Triton on CUDA); ``aot_eager`` traces without generating code. A
    name torch does not know is a ``ConfigError`` (checked with the configuration, before a run starts)."""
    backend = os.environ.get(COMPILE_BACKEND, "inductor")
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        # torch's own *_TESTING_ONLY backends fail on purpose: known (accepted), never offered
        offered = sorted(name for name in known if not name.endswith("_TESTING_ONLY"))
        raise ConfigError(
            f"${COMPILE_BACKEND} names torch.compile backend {backend!r}, which torch does not know; "
            f"choose one of: {', '.join(offered)} (or unset it for inductor)"
        )
    return backend


def _compile_failure(exc: BaseException) -> str:
    """What a backend raised, in one line (torch wraps it in ``BackendCompilerFailed``, whose own first
    line says only that the backend raised)."""
    inner = getattr(exc, "inner_exception", None) or exc
    text = str(inner).strip()
    return f"{type(inner).__name__}: {text.splitlines()[0]}" if text else type(inner).__name__


_COMPILERS_CHECKED: set[tuple[str, str]] = set()  # (backend, device type) that compiled the check's graph


def check_compiler(device: torch.device) -> None:
    """Check that :func:`compile_backend` can compile at all on ``device``'s type (inductor: a working C++
    compiler on the CPU, Triton on CUDA) by handing it one tiny graph, as torch.compile would, before a
    run writes anything; once per backend and device type in a process (seconds, mostly importing the
    backend's compiler stack, which the run needs anyway: docs/RUNS.md). Dynamo is bypassed, so no graph
    is cached or counted. Raises ``ConfigError`` naming the fix. What only the model's own code can
    show (an operation the backend cannot compile) surfaces at the first step: :func:`compiled_loss`."""
    backend = compile_backend()
    if (backend, device.type) in _COMPILERS_CHECKED:
        return
    graph = torch.fx.symbolic_trace(lambda x: (torch.relu(x) * 2,))  # backends take graphs of tuple outputs
    example = torch.ones(4, device=device)
    try:
        torch._dynamo.lookup_backend(backend)(graph, [example])(example)
    except Exception as exc:  # a backend is anyone's code: any failure means it cannot compile
        first = _compile_failure(exc)
        raise ConfigError(
            f"--compile: torch.compile backend {backend!r} cannot compile on {device.type}: {first}; run without "
            f"--compile, or choose a backend that works with ${COMPILE_BACKEND} (aot_eager needs no compiler)"
        ) from exc
    _COMPILERS_CHECKED.add((backend, device.type))


def compiled_loss(
    loss: Callable[..., tuple[torch.Tensor, ...]], continue_with: str | None = None
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``loss`` (a task's :meth:`Task.loss`: the forward pass and the loss) through ``torch.compile``
    with :func:`compile_backend`.

    One compiled function serves every model of the run: torch compiles it once per architecture (its
    guards tell the models apart) and keeps each, so a Motivation switch reuses the model's compiled
    code instead of compiling again. Only the call is compiled, never the module: the models, their
    ``state_dict`` keys (no ``_orig_mod.`` prefix), checkpoints and saved files are those of an
    uncompiled run, and tests run eagerly. Code that cannot be traced (e.g. the MoE layers' routing
    counts, which read the autograd engine's state) runs eagerly between compiled graphs, with the same
    results. A failure to compile is a ``ConfigError`` naming the fix. It can only surface at a model's
    first step, where torch compiles (:func:`check_compiler` finds a backend that cannot compile at all
    before a run starts): the run has written its folder by then, so the message says so and names
    ``continue_with``, the command that continues the run once the backend works (from its last
    checkpoint, or from step 0 if it has none)."""
    backend = compile_backend()
    function = torch.compile(loss, backend=backend)

    def call(*args: Any) -> tuple[torch.Tensor, ...]:
        try:
            return function(*args)
        except torch._dynamo.exc.TorchDynamoException as exc:  # errors of the model's own code pass through
            first = _compile_failure(exc)
            then = (
                f"; the run stopped at the first step of this model, where torch compiles it: continue it with "
                f"{continue_with} once the backend works, or start it again without --compile in a new folder"
                if continue_with
                else "; run without --compile"
            )
            raise ConfigError(
                f"torch.compile (backend {backend!r}) could not compile the training step: {first}"
                f"{then} (another backend: ${COMPILE_BACKEND})"
            ) from exc

    return call


class HostClock:
    """Seconds of stretches of a step (``start`` .. ``stop``) on a device that computes as it is called
    (the CPU): ``time.perf_counter``. ``take`` returns the seconds since the last ``take``."""

    def __init__(self, device: torch.device) -> None:
        self.seconds, self.tick = 0.0, 0.0

    def start(self) -> None:
        self.tick = time.perf_counter()

    def stop(self) -> None:
        self.seconds += time.perf_counter() - self.tick

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class EventClock:
    """The same on a device that queues its work (CUDA): an event recorded on the device's stream at
    ``start`` and at ``stop``, so a stretch counts the device's work it launched (``perf_counter`` would
    count only the launches) without the host waiting for it; ``take`` reads the events, waiting only
    for work the device has not finished (none after ``step_outcome``'s sync)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.current_stream(device)
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> None:
        self.pending.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
        self.pending[-1][0].record(self.stream)

    def stop(self) -> None:
        self.pending[-1][1].record(self.stream)

    def take(self) -> float:
        seconds = 0.0
        for start, stop in self.pending:
            stop.synchronize()
            seconds += start.elapsed_time(stop) / 1000  # milliseconds
        self.pending = []
        return seconds


# What times a stretch of a step on each kind of device (``torch.device.type``); the others: HostClock.
STEP_CLOCKS: dict[str, Callable[[torch.device], HostClock | EventClock]] = {"cuda": EventClock}


@dataclass
class LearningRate:
    """The learning rate of each step: ``lr * lr_factor(name, step, total, warmup)``."""

    lr: float
    name: str
    total: int  # steps of the run
    warmup: int = 0  # steps

    def __post_init__(self) -> None:
        # a schedule of the registry is a user's function too: a NaN or negative rate would train
        # silently wrong weights, so every step's rate is checked before the run starts
        for step in range(self.total):
            rate = self(step)
            if not (math.isfinite(rate) and rate >= 0):
                raise ConfigError(
                    f"the {self.name!r} schedule gives a learning rate of {rate} at step {step} of {self.total}; "
                    "a schedule must give finite rates >= 0: check it (or --lr)"
                )

    def __call__(self, step: int) -> float:
        return self.lr * lr_factor(self.name, step, self.total, self.warmup)


class Engine:
    """Runs ``task`` for ``schedule.total`` steps (see the module docstring).

    Args:
        task: the trainer's :class:`Task`.
        schedule: the learning rate per step, and the run's length.
        period: steps per period (an epoch, an evaluation interval); the last step always ends one.
        device: where the forward pass runs (its type chooses the autocast device).
        amp: the forward pass under bfloat16 autocast (no gradient scaler: bfloat16 needs none).
        compile: the forward pass and loss through ``torch.compile`` (:func:`compiled_loss`).
        checkpoints: where checkpoints go (``None``: none are written, nor resumed from).
        identity: the configuration a checkpoint must have been written with to be resumed from.
        interrupted: the command that continues the run, for :class:`RunInterrupted`.
    """

    def __init__(
        self,
        task: Task,
        schedule: LearningRate,
        *,
        period: int,
        device: torch.device,
        amp: bool = False,
        compile: bool = False,
        ranks: Ranks | None = None,
        max_nonfinite: int = 10,
        checkpoints: Checkpoints | None = None,
        checkpoint_every: int = 0,
        identity: dict[str, Any] | None = None,
        interrupted: str | None = None,
        progress: bool = False,
        describe: Callable[[int], str] = lambda step: "training",
    ) -> None:
        self.task, self.schedule, self.period = task, schedule, period
        self.device, self.amp, self.ranks = device, amp, ranks or Ranks()
        self.max_nonfinite, self.checkpoints, self.checkpoint_every = max_nonfinite, checkpoints, checkpoint_every
        self.identity, self.interrupted = identity or {}, interrupted
        self.progress, self.describe = progress, describe
        if compile:
            check_compiler(device)  # before the trainer writes anything
        self.loss = compiled_loss(task.loss, interrupted if checkpoints else None) if compile else task.loss
        self.counters = Counters()
        self.optimizer_clock = STEP_CLOCKS.get(device.type, HostClock)(device)  # Counters.optimizer_seconds
        self.parameters: dict[nn.Module, list[torch.Tensor]] = {}
        self.state = Parts(**task.parts(), progress=self.counters, rng=GlobalRandomState())

    def resume(self) -> bool:
        """Load the newest checkpoint that loads, if there is one; returns whether there was."""
        state = self.checkpoints.latest() if self.checkpoints else None
        if state is None:
            return False
        check_state(state, self.identity, self.checkpoints.folder)
        with fitting(self.checkpoints.folder, "this run's models"):
            self.state.load_state_dict(state)
        return True

    def save(self) -> None:
        """Write a checkpoint (rank 0; every rank holds the same state)."""
        self.counters.optimizer_seconds += self.optimizer_clock.take()  # the counters whole, the last step's too
        if self.checkpoints is not None and self.ranks.main:
            state = {"seeking_version": __version__, "config": self.identity, **self.state.state_dict()}
            self.checkpoints.save(self.counters.step, state)

    def run(self) -> Counters:
        """Train to the end of the schedule, from wherever the counters stand; returns them."""
        c = self.counters
        started = time.perf_counter() - c.wall_seconds
        bar = tqdm(total=self.schedule.total, initial=c.step, unit="step", leave=False, disable=not self.progress)
        stopping = False  # agreed by all processes at the last step
        shown: dict[str, str] = {}  # on the bar: the step's loss, and what the task shows of the last period
        try:
            with StopRequests() as stop:
                while c.step < self.schedule.total:
                    if stopping:
                        c.wall_seconds = time.perf_counter() - started
                        self.save()
                        during = f" during {self.task.name}" if self.task.name else ""
                        where = f"{stop.requested or 'a stop request'}{during} at step {c.step}"
                        raise RunInterrupted(where, self.interrupted if self.checkpoints else None)
                    if self.progress:
                        bar.set_description(self.describe(c.step), refresh=False)
                    tick = time.perf_counter()
                    loss, stopping = self._step(stop)
                    c.train_seconds += time.perf_counter() - tick
                    if self.progress:
                        shown["loss"] = f"{loss:.4g}"
                        bar.set_postfix(shown, refresh=False)
                        bar.update()
                    if c.step % self.period == 0 or c.step == self.schedule.total:
                        with tqdm.external_write_mode(file=sys.stderr):  # log lines go above the bar, not through it
                            shown.update(self.task.end_period(c))
                        c.loss_sum, c.loss_count = 0.0, 0
                    elif not (self.checkpoint_every and c.step % self.checkpoint_every == 0):
                        continue
                    c.wall_seconds = time.perf_counter() - started
                    self.save()
        finally:
            bar.close()
        c.optimizer_seconds += self.optimizer_clock.take()
        c.wall_seconds = time.perf_counter() - started
        return c

    def _step(self, stop: StopRequests) -> tuple[float, bool]:
        """One training step; returns its loss (averaged over processes) and whether a process asked to stop."""
        c, task, plan = self.counters, self.task, self.task.plan
        inputs, targets = task.next_batch()
        lr = self.schedule(c.step)
        model, optimizer = plan.select()
        role = plan.active
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            reported, minimised = self.loss(task.nets[role], model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        minimised.backward()
        for hook in list(_step_hooks.values()):
            replaced = hook(c.step, reported)
            reported = reported if replaced is None else replaced
        # the guard's one host sync per step, which the condition needs anyway, with the all-reduce
        # that keeps the processes agreed
        parameters = self.parameters.get(model)
        if parameters is None:  # listed once per model: walking the module tree each step costs ~2% of a small step
            parameters = self.parameters[model] = list(model.parameters())
        # a stop asked for until now (Ctrl-C during this step included) ends the run after this step
        loss, finite, stopping = step_outcome(reported, parameters, self.ranks, stop.requested is not None)
        c.optimizer_seconds += self.optimizer_clock.take()  # the last step's: done, step_outcome waited for it
        if finite:
            self.optimizer_clock.start()
            optimizer.step()
            self.optimizer_clock.stop()
            plan.observe(loss)
            c.loss_sum += loss
            c.loss_count += 1
            c.nonfinite_run = 0
        else:  # skipped: the weights stay finite, so nothing reaches another model or the condition
            task.skip()
            c.skipped += 1
            c.nonfinite_run += 1
        task.after_step(c.step, role, loss, lr, finite)
        if c.nonfinite_run >= self.max_nonfinite:  # after the task's log: it holds every skipped step
            raise Diverged(
                f"{self.task.name or 'training'} diverged: {c.nonfinite_run} non-finite losses or gradients in a row "
                f"(last at step {c.step}, lr {lr:.3g}); lower --lr, or raise --max-nonfinite"
            )
        c.step += 1
        return loss, stopping


class JsonLog:
    """A JSON-lines log as a Stateful part: its state is the file's length, flushed to disk, which a
    resume cuts the file back to; lines written after the checkpoint are dropped. Opened by
    :meth:`open`, after any state is loaded. Without a path (ranks other than 0) it writes nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.file, self.resume_at = path, None, None

    def open(self) -> JsonLog:
        if self.path is None:
            return self
        if self.resume_at is not None:
            size = self.path.stat().st_size if self.path.exists() else -1
            if size < self.resume_at:
                raise CheckpointError(
                    f"{self.path} holds {max(size, 0)} bytes but the checkpoint recorded {self.resume_at}: the "
                    "log was truncated or replaced since; it cannot be resumed"
                )
            os.truncate(self.path, self.resume_at)
        self.file = open(self.path, "a" if self.resume_at is not None else "w")  # noqa: SIM115 (closed by close())
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")

    def state_dict(self) -> dict[str, Any]:
        if not self.file:
            return {"length": 0}
        self.file.flush()
        os.fsync(self.file.fileno())
        return {"length": self.file.tell()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_at = int(state["length"])

    def close(self) -> None:
        if self.file:
            self.file.close()
