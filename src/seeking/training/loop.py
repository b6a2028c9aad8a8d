"""``seeking train``: one training run, motivated or classical, as a task of the engine.

``train(config, run_dir)`` loads the data, builds the model(s) and the plan (a
:class:`~seeking.motivation.Motivator` for a pair, :class:`~seeking.motivation.SingleModel` for one),
hands a :class:`MotivationTask` to the :class:`~seeking.training.engine.Engine`, which trains one model
per batch, and writes the run folder (its files are named in :mod:`seeking.runs`): ``config.json``,
``steps.jsonl`` (one line per step: step, epoch, model that stepped, loss, learning rate),
``epochs.jsonl`` (one line per epoch: p, FLOPs so far, train loss, and each model's test accuracy,
``<role>_accuracy``, or for text its validation loss, ``<role>_loss``), the
final models ``base.safetensors`` / ``large.safetensors`` (loadable with nothing from here; a
classical run writes only its one model's), ``checkpoints/`` (training states for resuming, see
:mod:`.checkpoint`), ``INCOMPLETE`` until the run completes, and ``summary.json``, written last.

``train(config, run_dir, resume=True)`` continues an unfinished run from its newest checkpoint; on CPU
the result is bit for bit the one an uninterrupted run gives. The first Ctrl-C (or SIGTERM) finishes
the current step, writes a checkpoint and raises :class:`~seeking.training.checkpoint.RunInterrupted`.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..errors import ConfigError, SeekingWarning
from ..excitation import Excitation
from ..flops import loss_step_flops
from ..io import write_json
from ..model_file import save_model
from ..models import create_model
from ..models.registry import model_recipe
from ..moe import expert_layers, moe_aux_loss
from ..motivation import Chain, Condition, Motivator, Never, SingleModel, TrainingPlan, chain_roles, make_condition
from ..motivation.batchnorm import deployable_copy
from ..motivation.chain import check_growing
from ..reporting.comparison import p_name, trained_steps
from ..reporting.excitation import BASELINE
from ..reporting.tensorboard import ScalarLog
from ..runs import (
    CHECKPOINTS,
    CONFIG,
    EPOCHS_LOG,
    STEPS_LOG,
    SUMMARY,
    TENSORBOARD,
    mark_complete,
    mark_incomplete,
    model_file,
    open_run_dir,
    resume_command,
    run_config,
)
from ..version import __version__
from ..wording import counted
from .checkpoint import Checkpoints
from .config import TrainConfig
from .distributed import Ranks, join, wrap
from .engine import Counters, Engine, JsonLog, LearningRate, Parts, Record, check_compiler
from .preflight import probing, reports_storage_errors
from .tasks import DataTask, check_model_kind, check_tokenizer, data_kind, load_data_task


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class Tested(Record):
    """What the Motivation task keeps besides the engine's counters."""

    flops: dict[str, int] = field(default_factory=dict)  # training FLOPs so far, by role (a chain's: by level)
    eval_seconds: float = 0.0
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # the last test of each model


def build_models(config: TrainConfig, data: DataTask) -> dict[str, nn.Module]:
    """The models this run trains (:meth:`TrainConfig.model_names`). Each is seeded on its own, with
    ``seed`` plus its level in the chain (base 0, a pair's large model 1), so the classical base and
    the base of a motivated run start from identical weights, and likewise the large models."""
    kwargs = {**data.model_kwargs(), **config.model_kwargs}
    names = config.model_names()
    models = {}
    for offset, role in enumerate(chain_roles(len(config.intermediate) + 2)):
        if role in names:
            torch.manual_seed(config.seed + offset)
            models[role] = create_model(names[role], **kwargs)
    return models


def check_excitable(config: TrainConfig, name: str, model: nn.Module) -> None:
    """Refuse ``--excitation`` for a model without MoE layers, naming it."""
    if config.excitation != BASELINE and not expert_layers(model):
        raise ConfigError(
            f"--excitation {config.excitation} scales the steps of MoE experts, but model {name!r} has no MoE "
            "layer: train MoE models (e.g. --pair gpt_moe_2l:gpt_moe_4l) or leave --excitation out"
        )


def build_optimizer(config: TrainConfig, name: str, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer of ``model`` (named ``name``), wrapped in Excitation under ``--excitation``.
    Routing counts left by the FLOP probe are dropped: the first step scales by its own batch."""
    optimizer = config.build_optimizer(model.parameters())
    if config.excitation == BASELINE:
        return optimizer
    check_excitable(config, name, model)
    excited = Excitation(optimizer, model, config.excitation, config.gamma, seed=config.seed)
    excited.discard_counts()
    return excited


def probe_models(config: TrainConfig, data: DataTask, models: dict[str, nn.Module]) -> dict[str, int]:
    """FLOPs of one training step of each model, counted on a forward and backward pass of the probe
    batch (the real shape): this pass is also the probe that each model can take the data, so a model
    that cannot is a ``ConfigError`` naming the fix, before the run folder exists."""
    sample, targets = data.probe_batch()
    flops, names = {}, config.model_names()
    for role, model in models.items():
        with probing(names[role], model, tuple(sample.shape), data.describe):
            flops[role] = loss_step_flops(model, sample, targets, data.loss)
    return flops


def train_task(config: TrainConfig, device: torch.device, progress: bool, dataset: ImageDataset | None) -> DataTask:
    """The data of ``seeking train`` (image classification, its training batches augmented, or text),
    after checking that both models are for that kind of data."""
    names = [config.base, *config.intermediate, config.motivated]
    for name in names:
        check_model_kind(name, data_kind(config.data), "--pair (or --base, --motivated)")
    check_tokenizer(config, names)
    options = {"split_seed": config.seed, "augmentation": True, "progress": progress, "dataset": dataset}
    data = load_data_task(config, device, **options)
    data.steps_per_epoch()  # refuses data too short for one step per epoch, before a comparison writes
    return data


def check_run(config: TrainConfig, dataset: ImageDataset | None, device: torch.device) -> None:
    """Fail early (before a comparison's folder exists and any arm trains) if the run cannot work: the
    data sizes, the pair, both models on one forward and backward of a batch of the real shape, and
    the condition's options (a budget's ``flops_saving`` against the FLOPs that pass counts), and that
    ``--compile``'s backend can compile (:func:`~seeking.training.engine.check_compiler`)."""
    data = train_task(config, device, False, dataset)
    if config.compile:
        check_compiler(device)
    names = [config.base, *config.intermediate, config.motivated]
    models = [create_model(name, **data.model_kwargs(), **config.model_kwargs).to(device) for name in names]
    for name, model in zip(names, models, strict=True):
        check_excitable(config, name, model)
    roles = chain_roles(len(models))
    trained = config.model_names()
    step_flops = probe_models(config, data, {r: m for r, m in zip(roles, models, strict=True) if r in trained})
    # each pair's condition built: its options checked (a budget's flops_saving against these FLOPs)
    pair_conditions(config, data.steps_per_epoch() * config.epochs, step_flops)
    # the maps inferred and the starts checked as in train() (a chain of two is the pair's Motivator);
    # their warnings are left to the arms
    unused = [torch.optim.SGD(m.parameters(), lr=0.0) for m in models]
    if len(models) > 2:
        check_growing(models, names)  # a chain's order, said with the models' names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Chain(models, [Never() for _ in models[1:]], unused, example_input=data.example())


def run_condition(config: TrainConfig, total: int, step_flops: dict[str, int], seed: int) -> Condition:
    """A condition of the run, from its options, its number of steps and the FLOPs per step of the
    pair it decides for (``{"base": ..., "motivated": ...}``), seeded with ``seed``."""
    options = {name: getattr(config, name) for name in config.condition_options}
    return make_condition(config.condition, seed=seed, total=total, step_flops=step_flops, **options)


def pair_conditions(config: TrainConfig, total: int, step_flops: dict[str, int]) -> list[Condition]:
    """One condition per adjacent pair of the run's models (``step_flops`` by role: the trained ones'),
    pair ``i`` seeded ``seed + i`` and given its own two levels' FLOPs."""
    roles = [role for role in chain_roles(len(config.intermediate) + 2) if role in step_flops]
    return [
        run_condition(config, total, {"base": step_flops[low], "motivated": step_flops[high]}, config.seed + i)
        for i, (low, high) in enumerate(itertools.pairwise(roles))
    ]


def build_plan(
    config: TrainConfig,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    data: DataTask,
    total: int,
    step_flops: dict[str, int],
) -> TrainingPlan:
    """A Motivator for a pair, a Chain for more models (built after the models are on their device;
    pair ``i`` of a chain gets its own condition, seeded ``seed + i``), or one model alone."""
    if len(models) == 1:
        ((role, model),) = models.items()
        return SingleModel(role, model, optimizers[role])
    conditions = pair_conditions(config, total, step_flops)
    policies = {
        "optimizer_state": config.optimizer_state,
        "batchnorm": config.batchnorm,
        "sync": config.sync,
        "example_input": data.example(),
        "average_loss": False,  # the engine passes the loss it averaged over the processes
    }
    if len(models) == 2:  # the Motivator itself (a chain of two equals it; its checkpoints hold its state)
        return Motivator(*models.values(), *conditions, *optimizers.values(), **policies)
    check_growing(list(models.values()), list(config.model_names().values()))  # said with the models' names
    return Chain(list(models.values()), conditions, list(optimizers.values()), **policies)


class MotivationTask:
    """Motivation training as an engine task: the plan trains one model per step; each epoch ends with
    a line in ``epochs.jsonl`` and, every ``eval_every_epochs``, a test of copies of both models (BatchNorm
    statistics re-estimated: what the run saves) by the data task's metric (test accuracy, or
    validation loss for text)."""

    name = None

    def __init__(
        self,
        config: TrainConfig,
        data: DataTask,
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        plan: TrainingPlan,
        step_flops: dict[str, int],
        run_dir: Path,
        ranks: Ranks,
        log: Callable[[str], None],
    ) -> None:
        self.config, self.data, self.models, self.plan, self.step_flops = config, data, models, plan, step_flops
        self.optimizers = optimizers
        # a pair is of one family: both MoE (minimising their routers' auxiliary losses too) or neither; one
        # flag for both keeps a compiled loss to one graph per architecture
        self.moe = any(expert_layers(m) for m in models.values())
        self.log, self.per_epoch = log, data.steps_per_epoch()
        self.nets = {role: wrap(m, ranks, data.device) for role, m in models.items()}  # DDP under torchrun
        self.batches, self.ranks = data.batches(config.seed), ranks
        self.record = Tested(flops=dict.fromkeys(models, 0))
        main = ranks.main  # rank 0 alone writes
        self.steps_log = JsonLog(run_dir / STEPS_LOG if main else None)
        self.epochs_log = JsonLog(run_dir / EPOCHS_LOG if main else None)
        self.board_dir = run_dir / TENSORBOARD if config.tensorboard and main else None
        self.board = ScalarLog(None)
        self.tested: dict[str, nn.Module] = {}  # the copies the last test measured: what the run saves
        self.state = Parts(
            models=Parts(models),
            optimizers=Parts(optimizers),
            plan=plan,
            data=self.batches,
            logs=Parts(steps=self.steps_log, epochs=self.epochs_log),
            record=self.record,
        )

    def parts(self) -> Parts:
        return self.state

    def open_logs(self, step: int) -> None:
        """Open the logs where the run stands (a resumed run's cut back to its checkpoint)."""
        self.steps_log.open()
        self.epochs_log.open()
        # a resumed run hides the events its interrupted process logged after the checkpoint
        self.board = ScalarLog(self.board_dir, purge_step=step)

    def close_logs(self) -> None:
        for log in (self.steps_log, self.epochs_log, self.board):
            log.close()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)  # the global batch; this process trains on its shard
        return self.ranks.shard(x), self.ranks.shard(y)

    def loss(self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = self.data.loss(net(x), y)
        # an MoE model minimises its routers' auxiliary losses too; the condition reads the task loss
        return loss, (loss + moe_aux_loss(model)) if self.moe else loss

    def skip(self) -> None:
        # a skipped step reaches neither model's weights nor the condition, nor its routing counts the next step
        for optimizer in self.optimizers.values():
            if isinstance(optimizer, Excitation):
                optimizer.discard_counts()

    def after_step(self, step: int, role: str, loss: float, lr: float, finite: bool) -> None:
        self.record.flops[role] += self.step_flops[role]
        entry = {"step": step, "epoch": step // self.per_epoch + 1, "model": role, "loss": loss, "lr": lr}
        if not finite:
            entry |= {"loss": None, "skipped": "non-finite loss or gradient"}  # JSON has no NaN
        self.steps_log.write(entry)
        self.board.write("step", step, entry)

    def test(self) -> dict[str, dict[str, float]]:
        """Test copies of the models (BatchNorm statistics re-estimated), kept as what the run saves."""
        self.plan.finish()  # both models hold the latest shared weights before they are tested
        # Copies, tested and later saved as they are: re-estimating one model's statistics cannot
        # reach the other through zero-copy sharing, and testing leaves training untouched.
        count = self.config.bn_recalibrate
        for role, model in self.models.items():
            calibration = self.data.calibration(count, self.config.seed + 2) if count else None
            self.tested[role] = deployable_copy(model, calibration)
        return {role: self.data.evaluate(model)[0] for role, model in self.tested.items()}

    def end_period(self, c: Counters) -> dict[str, str]:
        config, plan, epoch = self.config, self.plan, c.step // self.per_epoch
        record = {
            "epoch": epoch,
            "steps": plan.steps,
            "p": plan.p,
            **{f"p_{role}": share for role, share in p_by_model(plan).items()},  # each model's share of the steps
            "switches": plan.switches,
            "train_loss": c.mean_loss,
            "skipped_steps": c.skipped,
            "flops": sum(self.record.flops.values()),
            "train_seconds": c.train_seconds,
        }
        every = config.eval_every_epochs
        if epoch == config.epochs or (every and epoch % every == 0):
            tick = time.perf_counter()
            self.record.results = self.test()
            key = self.data.metric_key
            record |= {f"{role}_{key}": r[key] for role, r in self.record.results.items()}
            self.record.eval_seconds += time.perf_counter() - tick
        self.epochs_log.write(record)
        self.board.write("epoch", c.step, record)
        tested = [n for n in self.models if f"{n}_{self.data.metric_key}" in record]
        levels = list(self.models) if len(self.models) > 2 else []  # a chain: each level's share
        self.log(
            f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.4f}  {p_name(self.models)} {plan.p:.2f}  "
            + "".join(f"p_{role} {record[f'p_{role}']:.2f}  " for role in levels)
            + "".join(f"{n} {self.data.metric} {record[f'{n}_{self.data.metric_key}']:.4g}  " for n in tested)
            + (f"{c.skipped} skipped steps  " if c.skipped else "")
            + f"{c.train_seconds:.1f}s"
        )
        return {p_name(self.models): f"{plan.p:.3f}"}


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
    warn_unused: bool = True,
) -> RunResult:
    """Run one training as configured and write the run folder (see the module docstring).

    ``resume=True`` continues the unfinished run in ``run_dir`` (whose config must be ``config``).
    ``dataset``: the image data set, already loaded (a comparison loads it once for its arms).
    ``continue_with`` is the command that continues an interrupted run, for ``INCOMPLETE`` and the
    interrupt's message (default: ``seeking train --resume RUN_DIR``; a comparison names itself).
    ``warn_unused``: warn of options set that the run will not use (a comparison warns for all its arms)."""
    config.validate()
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log or (lambda line: print(line, file=sys.stderr, flush=True)))
    bar = progress and sys.stderr.isatty() and ranks.main
    data = train_task(config, device, bar, dataset)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    models = {role: m.to(device, memory_format=memory_format) for role, m in build_models(config, data).items()}
    step_flops = probe_models(config, data, models)  # also the probe that the models take the data
    total = data.steps_per_epoch() * config.epochs
    names = config.model_names()
    optimizers = {role: build_optimizer(config, names[role], m) for role, m in models.items()}
    plan = build_plan(config, models, optimizers, data, total, step_flops)  # checks the pair and its start
    if warn_unused and not resume:
        config.warn_unused()
    run_dir = Path(run_dir)
    continue_with = continue_with or resume_command("train", run_dir)
    task = MotivationTask(config, data, models, optimizers, plan, step_flops, run_dir, ranks, log)
    engine = Engine(
        task,
        LearningRate(config.lr, config.schedule, total, round(config.warmup_epochs * data.steps_per_epoch())),
        period=data.steps_per_epoch(),
        device=device,
        amp=config.amp,
        compile=config.compile,
        ranks=ranks,
        max_nonfinite=config.max_nonfinite,
        checkpoints=Checkpoints(run_dir / CHECKPOINTS, config.keep_checkpoints),
        checkpoint_every=config.checkpoint_every,
        identity={**config.to_dict(), **data.identity()},
        interrupted=continue_with,
        progress=bar,
        describe=lambda step: f"epoch {step // data.steps_per_epoch() + 1}/{config.epochs}",
    )
    # Everything is checked (the pair included, by the Motivator) before anything is written.
    record = run_config("train", config.to_dict())
    open_run_dir("train", run_dir, record, continue_with, resume=resume, ranks=ranks)
    if resume and engine.resume():
        step = engine.counters.step
        log(f"resuming {run_dir} at step {step} (epoch {step // task.per_epoch + 1}, batch {step % task.per_epoch})")
    elif resume and ranks.main:  # died before its first checkpoint (a comparison's arm: before its claim)
        log(f"{run_dir} has no checkpoint yet: starting the run again from step 0")
        write_json(run_dir / CONFIG, record)
        mark_incomplete(run_dir, continue_with)
    names = config.model_names()
    log(
        f"training {' -> '.join(names.values())} on {data.name} ({data.sizes}), condition {config.condition}, "
        f"{counted(config.epochs, 'epoch')} x {counted(data.steps_per_epoch(), 'step')}, run folder {run_dir}"
    )
    task.open_logs(engine.counters.step)
    try:
        counters = engine.run()
    finally:
        task.close_logs()
    if not task.tested:  # resumed after the last test: test again, so the models saved are the models tested
        task.record.results = task.test()
    summary = run_summary(config, task, counters)
    kwargs = {**data.model_kwargs(), **config.model_kwargs}
    for role, model in task.tested.items():  # the last test's figures describe exactly these models
        if ranks.main:
            metadata = data.file_metadata(config.data, config.test_subset)
            save_model(model, run_dir / model_file(role), *model_recipe(names[role], model, kwargs), metadata)
        summary["models"][role] = {
            "model": names[role],
            **task.record.results[role],
            "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint": model_file(role),
        }
    if ranks.main:
        write_json(run_dir / SUMMARY, summary)
        mark_complete(run_dir)
    warn_untrained(summary, names, run_dir)
    return RunResult(run_dir, summary)


def run_summary(config: TrainConfig, task: MotivationTask, counters: Counters) -> dict[str, Any]:
    """``summary.json`` without its models: the plan's counts, costs and times."""
    plan, flops = task.plan, task.record.flops
    return {
        "seeking_version": __version__,
        "condition": config.condition,
        # Excitation of the MoE experts' steps, or "none" for a plain optimizer (gamma then unused: null)
        "excitation": config.excitation,
        "gamma": config.gamma if config.excitation != BASELINE else None,
        "steps": plan.steps,
        "motivated_steps": plan.motivated_steps,
        "p": plan.p,
        "switches": plan.switches,
        "steps_by_model": plan.steps_by_model,
        "p_by_model": p_by_model(plan),
        "skipped_steps": counters.skipped,
        "train_flops": sum(flops.values()),
        "train_flops_by_model": flops,
        "step_flops": task.step_flops,
        "batch_shape": list(task.data.probe_batch()[0].shape),
        "metric": task.data.metric_key,  # what the models' results are compared by
        "train_seconds": counters.train_seconds,
        "eval_seconds": task.record.eval_seconds,
        "models": {},
    }


def p_by_model(plan: TrainingPlan) -> dict[str, float]:
    """The fraction of the plan's steps so far that trained each of its models (0 before any step)."""
    return {role: count / plan.steps if plan.steps else 0.0 for role, count in plan.steps_by_model.items()}


def warn_untrained(summary: dict[str, Any], names: dict[str, str], run_dir: Path) -> None:
    """A model of the run that no step trained is saved with its starting weights: say so."""
    for role in names:
        # a pair's models share weights through the map: the untrained one holds the other's copy of them
        shared = (
            "the weights it shares with the other model (as that one trained them) and otherwise "
            if len(names) > 1
            else ""
        )
        if trained_steps(summary, role) == 0:
            warnings.warn(
                f"the {role} model {names[role]} of {run_dir} was never trained: none of the run's "
                f"{counted(summary['steps'], 'step')} were its ({p_name(names)} = {summary['p']:.3f}), so "
                f"{model_file(role)} holds {shared}its starting weights; check --condition, --k and --p",
                SeekingWarning,
                stacklevel=4,  # the caller of train(), past its storage-error wrapper
            )
