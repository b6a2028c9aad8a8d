"""One training run, motivated or classical, read top to bottom.

``train(config, run_dir)`` loads the data, builds the model(s), trains one model per batch (the
:class:`~seeking.motivation.Motivator` chooses which), evaluates, and writes the run folder:

    config.json      the full configuration
    steps.jsonl      one line per step: step, epoch, model that stepped, loss, learning rate
    epochs.jsonl     one line per epoch: p, FLOPs so far, train loss, test accuracy of each model
    base.safetensors / large.safetensors   the final models (loadable with nothing from here): the
                     small and the large one, whichever the condition (a classical large run
                     writes only large.safetensors)
    checkpoints/     training states for resuming (the last ``keep_checkpoints``), see :mod:`.resume`
    INCOMPLETE       present until the run completes; says how to resume it
    summary.json     final figures; written last, so its presence means the run completed

``train(config, run_dir, resume=True)`` continues an unfinished run from its newest checkpoint; on CPU
the result is bit for bit the one an uninterrupted run gives. The first Ctrl-C (or SIGTERM) finishes
the current step, writes a checkpoint and raises :class:`~seeking.training.resume.RunInterrupted`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..checkpoint import save_model
from ..data import ImageData, ImageDataset, augment, batches, data_source, load_dataset, normalize
from ..data.core import run_splits
from ..data.transforms import EpochBatches
from ..errors import ConfigError, SeekingError, SeekingWarning
from ..io import write_json
from ..models import create_model
from ..motivation import Motivator, Never, make_condition
from ..motivation.batchnorm import deployable_copy
from ..reporting.comparison import trained_steps
from ..reporting.tensorboard import ScalarLog
from ..wording import counted
from .config import TrainConfig
from .distributed import Ranks, join, sum_over_ranks, wrap
from .evaluate import evaluate
from .flops import train_step_flops
from .optim import build_optimizer, lr_factor
from .preflight import claim_run_dir, probing, reports_storage_errors
from .resume import (
    Checkpoints,
    JsonLines,
    RunInterrupted,
    StopRequests,
    check_state,
    fitting,
    mark_complete,
    mark_incomplete,
    resume_command,
    rng_state,
    run_config,
    set_rng_state,
)

# The file of each model of a run, by its role. Named by size, not "motivated": the large model of a
# classical run (condition ``always``) was never motivated.
MODEL_FILES = {"base": "base.safetensors", "motivated": "large.safetensors"}


class SingleModel:
    """Classical training of one model, with the Motivator's ``select``/``observe`` interface."""

    def __init__(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.active, self.model, self.optimizer = name, model, optimizer
        self.steps = self.motivated_steps = self.switches = 0

    @property
    def p(self) -> float:
        return float(self.active == "motivated") if self.steps else 0.0

    def select(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        return self.model, self.optimizer

    def observe(self, loss: float) -> None:
        self.steps += 1
        self.motivated_steps += self.active == "motivated"

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "motivated_steps": self.motivated_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.motivated_steps = int(state["steps"]), int(state["motivated_steps"])


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class Progress:
    """The loop's counters: what a checkpoint holds besides weights, optimizers and random states."""

    step: int = 0  # steps done
    epoch: int = 1  # the epoch in progress
    position: int = 0  # its batches done
    loss_sum: float = 0.0  # this epoch's finite losses
    counted: int = 0
    skipped: int = 0  # non-finite steps, all epochs
    nonfinite_run: int = 0  # non-finite steps in a row
    flops: dict[str, int] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # the last test of each model


def step_outcome(loss: torch.Tensor, model: nn.Module, ranks: Ranks, stop: bool) -> tuple[float, bool, bool]:
    """The loss averaged over processes, whether it and every gradient of ``model`` are finite, and
    whether any process was asked to stop: one all-reduce and one host sync, so every rank decides alike."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else loss.new_zeros(())
    flag = torch.ones((), device=loss.device) if stop else torch.zeros((), device=loss.device)
    values = sum_over_ranks(torch.stack([loss.detach().float(), norm.float(), flag]), ranks)
    loss_sum, norm_sum, stops = values.tolist()
    loss_value = loss_sum / ranks.world
    return loss_value, math.isfinite(loss_value) and math.isfinite(norm_sum), stops > 0


def model_kwargs(config: TrainConfig, dataset: ImageDataset) -> dict[str, Any]:
    """The constructor arguments of both models: the data's shape and the user's ``model_kwargs``."""
    data = {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}
    return {**data, "image_size": list(dataset.image_size), **config.model_kwargs}


def build_models(config: TrainConfig, dataset: ImageDataset) -> dict[str, nn.Module]:
    """The models this run trains. Each is seeded on its own, so the classical base and the base of
    a motivated run start from identical weights, and likewise the large models."""
    kwargs = model_kwargs(config, dataset)
    models = {}
    if config.condition != "always":
        torch.manual_seed(config.seed)
        models["base"] = create_model(config.base, **kwargs)
    if config.condition != "never":
        torch.manual_seed(config.seed + 1)
        models["motivated"] = create_model(config.motivated, **kwargs)
    return models


def split_data(config: TrainConfig, dataset: ImageDataset) -> tuple[ImageData, ImageData]:
    """The training and test examples of this run (:func:`~seeking.data.core.run_splits`)."""
    return run_splits(dataset, config.train_subset, config.test_subset, config.batch_size, config.seed)


def start_probe(dataset: ImageDataset, device: torch.device | str = "cpu") -> torch.Tensor:
    """Two normalised training images: the batch on which the Motivator checks that the motivated
    model starts as the base's function."""
    return normalize(dataset.train.images[:2].to(device), dataset.mean, dataset.std)


def probe_models(
    config: TrainConfig, dataset: ImageDataset, models: dict[str, nn.Module], sample: torch.Tensor
) -> dict[str, int]:
    """FLOPs of one training step of each model, counted on a forward and backward pass of ``sample``
    (a batch of the real shape): this pass is also the probe that each model can take the data, so a
    model that cannot is a ``ConfigError`` naming the fix, before the run folder exists."""
    flops = {}
    for role, model in models.items():
        with probing(getattr(config, role), model, tuple(sample.shape), f"the images of {dataset.name}"):
            flops[role] = train_step_flops(model, sample, dataset.num_classes)
    return flops


def check_run(config: TrainConfig, dataset: ImageDataset, device: torch.device) -> None:
    """Fail early (before a comparison's folder exists and any arm trains) if the run cannot work: the
    data sizes, the pair, and both models on one forward and backward of a batch of the real shape
    (without counting FLOPs, which each arm does)."""
    train_data, _ = split_data(config, dataset)
    kwargs = model_kwargs(config, dataset)
    models = {role: create_model(getattr(config, role), **kwargs) for role in ("base", "motivated")}
    sample = normalize(train_data.images[: config.batch_size].to(device), dataset.mean, dataset.std)
    labels = train_data.labels[: config.batch_size].to(device)
    for role, model in models.items():
        with probing(getattr(config, role), model, tuple(sample.shape), f"the images of {dataset.name}"):
            F.cross_entropy(model.to(device)(sample), labels).backward()
    # the map inferred and the start checked as in train(); its warnings are left to the arms
    unused = [torch.optim.SGD(m.parameters(), lr=0.0) for m in models.values()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Motivator(*models.values(), Never(), *unused, example_input=start_probe(dataset, device))


@reports_storage_errors
def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    dataset: ImageDataset | None = None,
    continue_with: str | None = None,
) -> RunResult:
    """Run one training as configured and write the run folder (see the module docstring).

    ``resume=True`` continues the unfinished run in ``run_dir`` (whose config must be ``config``).
    ``continue_with`` is the command that continues an interrupted run, for ``INCOMPLETE`` and the
    interrupt's message (default: ``seeking train --resume RUN_DIR``; a comparison names itself)."""
    config.validate()
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log or (lambda line: print(line, file=sys.stderr, flush=True)))
    bar = progress and sys.stderr.isatty() and ranks.main
    dataset = dataset or load_dataset(config.data, cache_dir=config.cache_dir, progress=bar)
    train_data, test_data = split_data(config, dataset)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    models = {n: m.to(device, memory_format=memory_format) for n, m in build_models(config, dataset).items()}
    optimizers = {
        n: build_optimizer(
            config.optimizer, m.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        for n, m in models.items()
    }
    train_data = ImageData(train_data.images.to(device), train_data.labels.to(device))
    stream = EpochBatches(train_data, config.batch_size, torch.Generator().manual_seed(config.seed))
    jitter = torch.Generator(device=device).manual_seed(config.seed)
    padding = config.crop_padding if config.crop_padding is not None else max(dataset.image_size) // 8
    steps_per_epoch = stream.per_epoch
    total_steps = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return normalize(images, dataset.mean, dataset.std).contiguous(memory_format=memory_format)

    def training_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return prepare(augment(images, padding=padding, hflip=dataset.hflip, generator=generator))

    # Counted once per model (every step has the same batch shape: drop_last); this is also the probe
    # that the models take the data.
    sample = prepare(train_data.images[: config.batch_size])
    step_flops = probe_models(config, dataset, models, sample)
    if len(models) == 2:
        condition = make_condition(config.condition, k=config.k, p=config.p, seed=config.seed, total=total_steps)
        plan = Motivator(
            models["base"],
            models["motivated"],
            condition,
            optimizers["base"],
            optimizers["motivated"],
            optimizer_state=config.optimizer_state,
            batchnorm=config.batchnorm,
            sync=config.sync,
            example_input=start_probe(dataset, device),
        )
    else:
        ((name, model),) = models.items()
        plan = SingleModel(name, model, optimizers[name])

    # Everything is checked (the pair included, by the Motivator) before anything is written.
    run_dir = Path(run_dir)
    continue_with = continue_with or resume_command("train", run_dir)
    checkpoints = Checkpoints(run_dir / "checkpoints", config.keep_checkpoints)
    record = run_config("train", config.to_dict())
    if resume:
        if (run_dir / "summary.json").exists():
            raise ConfigError(f"cannot resume {run_dir}: the run is complete (it has summary.json)")
        state = checkpoints.latest(warn=log)
        if state is None and ranks.main:
            log(f"{run_dir} has no checkpoint yet: starting the run again from step 0")
            write_json(run_dir / "config.json", record)
            mark_incomplete(run_dir, continue_with)
    else:
        claim_run_dir(run_dir, record, continue_with, ranks)
        state = None
    run = Progress(flops=dict.fromkeys(models, 0))
    if state is not None:
        check_state(state, config.to_dict(), checkpoints.folder)
        with fitting(checkpoints.folder, "this run's models"):
            for n, m in models.items():
                m.load_state_dict(state["models"][n])
                optimizers[n].load_state_dict(state["optimizers"][n])
        plan.load_state_dict(state["plan"])
        stream.load_state_dict(state["stream"])
        jitter.set_state(state["jitter"])
        set_rng_state(state["rng"])
        run = Progress(**state["progress"])
        log(f"resuming {run_dir} at step {run.step} (epoch {run.epoch}, batch {run.position})")
    logs = {"steps": state["logs"]["steps"], "epochs": state["logs"]["epochs"]} if state else {}
    step_log = JsonLines(run_dir / "steps.jsonl" if ranks.main else None, logs.get("steps", 0 if resume else None))
    epoch_log = JsonLines(run_dir / "epochs.jsonl" if ranks.main else None, logs.get("epochs", 0 if resume else None))
    # DDP over each model; built after loading, though every rank holds the same weights anyway.
    nets = {n: wrap(m, ranks, device) for n, m in models.items()}

    model_names = {"base": config.base, "motivated": config.motivated}
    log(
        f"training {' -> '.join(model_names[n] for n in models)} on {dataset.name} "
        f"({len(train_data)} train / {len(test_data)} test), "
        f"condition {config.condition}, {counted(config.epochs, 'epoch')} x {counted(steps_per_epoch, 'step')}, "
        f"run folder {run_dir}"
    )

    def calibration() -> Iterator[torch.Tensor] | None:
        """The same batches on every call, made one at a time; None when re-estimation is off."""
        if not config.bn_recalibrate:
            return None
        # batches as training sees them (augmented): the weights were fitted to those statistics
        calibration_order = torch.Generator().manual_seed(config.seed + 2)
        calibration_jitter = torch.Generator(device=device).manual_seed(config.seed + 2)
        chosen = itertools.islice(
            batches(train_data, config.batch_size, shuffle=True, generator=calibration_order), config.bn_recalibrate
        )
        return (training_batch(x, calibration_jitter) for x, _ in chosen)

    tested: dict[str, nn.Module] = {}  # the copies the last test measured: what the run saves

    def test_models() -> dict[str, dict[str, float]]:
        plan.finish()  # both models hold the latest shared weights before they are tested
        # Copies, tested and later saved as they are: re-estimating one model's statistics cannot
        # reach the other through zero-copy sharing, and testing leaves training untouched.
        tested.update({n: deployable_copy(m, calibration()) for n, m in models.items()})
        return {
            n: evaluate(t, test_data, dataset.mean, dataset.std, channels_last=config.channels_last, progress=bar)
            for n, t in tested.items()
        }

    def save_checkpoint() -> None:
        if not ranks.main:
            return
        checkpoints.save(
            run.step,
            {
                "seeking_version": __version__,
                "config": config.to_dict(),
                "progress": dataclasses.asdict(run),
                "models": {n: m.state_dict() for n, m in models.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "plan": plan.state_dict(),
                "stream": stream.state_dict(),
                "jitter": jitter.get_state(),
                "rng": rng_state(),
                "logs": {"steps": step_log.mark(), "epochs": epoch_log.mark()},
            },
        )

    stopping = False  # agreed by all processes at the last step
    # rank 0 writes; a resumed run hides the events its interrupted process logged after the checkpoint
    board = ScalarLog(run_dir / "tensorboard" if config.tensorboard and ranks.main else None, purge_step=run.step)
    try:
        with StopRequests() as stop:
            while run.epoch <= config.epochs:
                epoch = run.epoch
                tick = time.perf_counter()
                progress_bar = tqdm(
                    range(run.position, steps_per_epoch),
                    total=steps_per_epoch,
                    initial=run.position,
                    desc=f"epoch {epoch}/{config.epochs}",
                    unit="step",
                    leave=False,
                    disable=not bar,
                )
                for _ in progress_bar:
                    if stopping:
                        run.train_seconds += time.perf_counter() - tick
                        save_checkpoint()
                        raise RunInterrupted(f"{stop.requested or 'a stop request'} at step {run.step}", continue_with)
                    x, y = next(stream)  # the global batch; this process trains on its shard
                    x, y = ranks.shard(training_batch(x, jitter)), ranks.shard(y)
                    lr = config.lr * lr_factor(config.schedule, run.step, total_steps, warmup)
                    model, optimizer = plan.select()
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                        loss = F.cross_entropy(nets[plan.active](x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    # one host sync, which the condition needs anyway: the loss and the gradients' norm
                    loss_value, finite, stopping = step_outcome(loss, model, ranks, stop.requested is not None)
                    run.flops[plan.active] += step_flops[plan.active]
                    loss_logged = loss_value if math.isfinite(loss_value) else None  # JSON has no NaN
                    entry = {"step": run.step, "epoch": epoch, "model": plan.active, "loss": loss_logged, "lr": lr}
                    if finite:
                        optimizer.step()
                        plan.observe(loss_value)
                        run.loss_sum += loss_value
                        run.counted += 1
                        run.nonfinite_run = 0
                    else:  # skipped: the weights stay finite, so nothing reaches the other model or the condition
                        entry["skipped"] = "non-finite loss or gradient"
                        run.skipped += 1
                        run.nonfinite_run += 1
                    step_log.write(entry)
                    board.write("step", run.step, entry)
                    if run.nonfinite_run >= config.max_nonfinite:  # logged first: the log holds every skipped step
                        raise SeekingError(
                            f"training diverged: {run.nonfinite_run} non-finite losses or gradients in a row "
                            f"(last at step {run.step}, lr {lr:.3g}); lower --lr, or raise --max-nonfinite"
                        )
                    progress_bar.set_postfix(loss=f"{loss_value:.4f}", p=f"{plan.p:.3f}", refresh=False)
                    run.step += 1
                    run.position += 1
                    if config.checkpoint_every and run.step % config.checkpoint_every == 0:
                        run.train_seconds += time.perf_counter() - tick
                        save_checkpoint()
                        tick = time.perf_counter()
                run.train_seconds += time.perf_counter() - tick

                record = {
                    "epoch": epoch,
                    "steps": plan.steps,
                    "p": plan.p,
                    "switches": plan.switches,
                    "train_loss": run.loss_sum / run.counted if run.counted else float("nan"),
                    "skipped_steps": run.skipped,
                    "flops": sum(run.flops.values()),
                    "train_seconds": run.train_seconds,
                }
                if epoch == config.epochs or (config.eval_every_epochs and epoch % config.eval_every_epochs == 0):
                    tick = time.perf_counter()
                    run.results = test_models()
                    record.update({f"{n}_accuracy": r["accuracy"] for n, r in run.results.items()})
                    run.eval_seconds += time.perf_counter() - tick
                epoch_log.write(record)
                board.write("epoch", run.step, record)
                log(
                    f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.4f}  p {plan.p:.2f}  "
                    + "".join(f"{n} {record[f'{n}_accuracy']:.2f}%  " for n in models if f"{n}_accuracy" in record)
                    + (f"{run.skipped} skipped steps  " if run.skipped else "")
                    + f"{run.train_seconds:.1f}s"
                )
                run.epoch, run.position, run.loss_sum, run.counted = epoch + 1, 0, 0.0, 0
                save_checkpoint()
    finally:
        step_log.close()
        epoch_log.close()
        board.close()

    if not tested:  # resumed after the last test: test again, so the models saved are the models tested
        run.results = test_models()
    kwargs = model_kwargs(config, dataset)
    normalization = {  # what `seeking evaluate` needs: normalisation, and the data set with its classes
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "dataset": dataset.name,
        "data": data_source(config.data),
        "classes": list(dataset.classes),
        "test_subset": config.test_subset,  # the test figures' examples: `seeking evaluate` takes the same
    }
    summary: dict[str, Any] = {
        "seeking_version": __version__,
        "condition": config.condition,
        "steps": plan.steps,
        "motivated_steps": plan.motivated_steps,
        "p": plan.p,
        "switches": plan.switches,
        "skipped_steps": run.skipped,
        "train_flops": sum(run.flops.values()),
        "train_flops_by_model": run.flops,
        "step_flops": step_flops,
        "batch_shape": list(sample.shape),
        "train_seconds": run.train_seconds,
        "eval_seconds": run.eval_seconds,
        "models": {},
    }
    for name, m in tested.items():  # the last test's figures describe exactly these models
        if ranks.main:
            save_model(m, run_dir / MODEL_FILES[name], model_names[name], kwargs, normalization)
        summary["models"][name] = {
            "model": model_names[name],
            **run.results[name],
            "parameters": sum(p.numel() for p in m.parameters()),
            "checkpoint": MODEL_FILES[name],
        }
    if ranks.main:
        write_json(run_dir / "summary.json", summary)
        mark_complete(run_dir)
    for role in models:
        if trained_steps(summary, role) == 0:
            warnings.warn(
                f"the {role} model {model_names[role]} of {run_dir} was never trained: none of the run's "
                f"{counted(plan.steps, 'step')} were its (p = {plan.p:.3f}), so {MODEL_FILES[role]} holds its "
                "starting weights; check --condition, --k and --p",
                SeekingWarning,
                stacklevel=2,
            )
    return RunResult(run_dir, summary)
