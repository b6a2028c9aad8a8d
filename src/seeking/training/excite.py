"""Excitation experiments: one MoE model trained by a base optimizer, plain and wrapped in Excitation.

Every arm (``"none"`` = the plain optimizer, or an Excitation strategy) trains the same model from
the same initial weights on the same batches, for each seed, and is tested every ``eval_every_steps``
steps. Each run is an :class:`ExcitationTask` of the :class:`~seeking.training.engine.Engine`; its data
task (:mod:`.tasks`) comes from ``--data``: image data sets train classifiers (Micro-MoE, the deep
sparse MLPs, ViT-MoE), a ``.txt`` file a character-level language model (GPT-MoE), which reports
validation loss.

The results folder holds ``config.json``, one ``runs/<arm>-seed<seed>.json`` per finished run, the
checkpoints of the run in progress (``checkpoints/<arm>-seed<seed>/``), ``INCOMPLETE`` until all runs
are done, and then ``excitation.{md,csv,json}``. ``compare_excitation(..., resume=True)`` reads the
finished runs back and resumes the one in progress exactly. A step with a non-finite loss or gradient
is skipped (its routing counts dropped) and counted; ``max_nonfinite`` in a row stop the experiment.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..excitation import Excitation
from ..io import atomic_write_text, write_json
from ..models import create_model
from ..moe import expert_layers, layer_utilization, moe_aux_loss, routing_metrics
from ..motivation import SingleModel
from ..reporting.excitation import excitation_csv, excitation_markdown, excitation_rows
from ..reporting.tensorboard import ScalarLog
from ..runs import (
    CHECKPOINTS,
    EXCITATION_CSV,
    EXCITATION_JSON,
    EXCITATION_MD,
    EXCITE_RUNS,
    REPORT,
    TENSORBOARD,
    excite_run_name,
    mark_complete,
    open_run_dir,
    resume_command,
    run_config,
)
from ..version import __version__
from ..wording import counted
from .checkpoint import Checkpoints, StopRequests
from .config import ExciteConfig
from .distributed import Ranks, join, wrap
from .engine import Counters, Engine, LearningRate, Parts, Record, check_compiler
from .preflight import probing, reports_storage_errors
from .tasks import DataTask, check_model_kind, check_tokenizer, data_kind, load_data_task

BASELINE = "none"


def build_model(config: ExciteConfig, data: DataTask, seed: int, device: torch.device) -> nn.Module:
    """The MoE model of one run, seeded with ``seed``; a model without expert layers is refused."""
    torch.manual_seed(seed)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    model = create_model(config.model, **data.model_kwargs(), **config.model_kwargs)
    model = model.to(device, memory_format=memory_format)
    if not expert_layers(model):
        raise ConfigError(
            f"model {config.model!r} has no MoE layer: Excitation needs a model with expert layers "
            "(micro_moe, sparse_mlp_deep10/20, vit_moe_tiny, gpt_moe_tiny, ...; see seeking.moe.protocol)"
        )
    return model


def excite_data(config: ExciteConfig, device: torch.device | str, progress: bool = False) -> DataTask:
    """The experiment's data: image classification (batches not augmented) or a text file."""
    data = load_data_task(config, torch.device(device), progress=progress)
    check_model_kind(config.model, data_kind(config.data))
    check_tokenizer(config, [config.model])
    return data


def probe(config: ExciteConfig, data: DataTask, device: torch.device) -> None:
    """One training forward and backward of a fresh model on a batch of the real shape: a model that
    cannot take the data is a ``ConfigError`` naming the fix, before anything is written."""
    model = build_model(config, data, config.seeds[0], device)
    x, y = data.probe_batch()
    with probing(config.model, model, tuple(x.shape), data.describe):
        (data.loss(model(x), y) + moe_aux_loss(model)).backward()


@dataclass
class Curve(Record):
    """One run's evaluations, as a checkpoint holds them."""

    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class ExcitationTask:
    """One run (an arm and a seed) of an Excitation experiment as an engine task: a model trained
    by the base optimizer, plain (arm ``none``) or wrapped in :class:`~seeking.excitation.Excitation`
    with the arm's strategy; tested every ``eval_every_steps`` steps, with routing metrics."""

    def __init__(
        self,
        config: ExciteConfig,
        data: DataTask,
        arm: str,
        seed: int,
        *,
        ranks: Ranks,
        log: Callable[[str], None],
        tensorboard_dir: Path | None = None,
    ) -> None:
        self.config, self.data, self.arm, self.seed, self.ranks, self.log = config, data, arm, seed, ranks, log
        self.name = f"{arm} seed {seed}"
        self.model = model = build_model(config, data, seed, data.device)
        optimizer = config.build_optimizer(model.parameters())
        if arm != BASELINE:
            optimizer = Excitation(optimizer, model, arm, config.gamma, seed=seed)
        self.optimizer = optimizer
        self.plan = SingleModel("base", model, optimizer)  # one model, trained at every step
        # a user's MoE layer may skip unused experts: DDP must not wait for their gradients
        self.nets = {"base": wrap(model, ranks, data.device, find_unused=True)}
        self.batches = data.batches(seed)
        self.curve = Curve()
        self.board = ScalarLog(None)
        self.tensorboard_dir = tensorboard_dir

    def parts(self) -> Parts:
        return Parts(model=self.model, optimizer=self.optimizer, data=self.batches, curve=self.curve)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)  # the global batch; this process trains on its shard
        return self.ranks.shard(x), self.ranks.shard(y)

    def loss(self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = self.data.loss(net(x), y)
        return loss, loss + moe_aux_loss(model)

    def skip(self) -> None:
        if isinstance(self.optimizer, Excitation):  # its routing counts go with it, not into the next step
            self.optimizer.discard_counts()

    def after_step(self, step: int, role: str, loss: float, lr: float, finite: bool) -> None:
        pass

    @torch.no_grad()
    def end_period(self, c: Counters) -> dict[str, str]:
        """Test, with the routing metrics of the last test batch and each layer's utilization."""
        results, targets = self.data.evaluate(self.model)
        value = results[self.data.metric_key]
        metrics = {k: v for k, v in routing_metrics(self.model, targets).items() if "/" not in k}
        phi = [f.tolist() for f in self.optimizer.last_factors] if self.arm != BASELINE else None
        point = {"step": c.step, "train_loss": c.mean_loss, self.data.metric: value, **metrics}
        self.curve.points.append({**point, "utilization": layer_utilization(self.model), "phi": phi})
        self.board.write("eval", c.step, self.curve.points[-1])
        dead = metrics.get("dead_fraction", float("nan"))
        self.log(
            f"  {self.arm:>12} seed {self.seed} step {c.step}/{self.config.steps}  train loss {c.mean_loss:.4f}  "
            f"{self.data.metric} {value:.4f}  dead {dead:.3f}"
        )
        return {self.data.metric: f"{value:.3g}", "dead": f"{dead:.3f}"}


def run_arm(
    config: ExciteConfig,
    data: DataTask,
    arm: str,
    seed: int,
    log: Callable[[str], None],
    *,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
    tensorboard_dir: Path | None = None,
    interrupted: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one arm for one seed; returns its final and periodic results (and TensorBoard scalars
    under ``tensorboard_dir`` if given).

    With ``checkpoints``, a checkpoint is written at each evaluation (and every ``checkpoint_every``
    steps); ``resume`` starts from the newest one; a stop request writes one and raises
    :class:`RunInterrupted` naming ``interrupted``, the command that continues. Under torchrun
    (``ranks``) each process trains on its shard of every batch in DistributedDataParallel."""
    ranks = ranks or Ranks()
    task = ExcitationTask(config, data, arm, seed, ranks=ranks, log=log, tensorboard_dir=tensorboard_dir)
    engine = Engine(
        task,
        LearningRate(config.lr, config.schedule, config.steps),
        period=config.eval_every_steps,
        device=data.device,
        amp=config.amp,
        compile=config.compile,
        ranks=ranks,
        max_nonfinite=config.max_nonfinite,
        checkpoints=checkpoints,
        checkpoint_every=config.checkpoint_every,
        identity={**dataclasses.asdict(config), **data.identity(), "arm": arm, "seed": seed},
        interrupted=interrupted,
        progress=progress,
        describe=lambda step: task.name,
    )
    if resume and engine.resume():
        log(f"  {arm:>12} seed {seed}: resuming at step {engine.counters.step}")
    task.board = ScalarLog(tensorboard_dir, purge_step=engine.counters.step)
    try:
        counters = engine.run()
    finally:
        task.board.close()
    final = {k: v for k, v in task.curve.points[-1].items() if k != "step"}
    return {
        "arm": arm,
        "seed": seed,
        "wall_seconds": counters.wall_seconds,
        "optimizer_step_ms": 1000 * counters.optimizer_seconds / config.steps,
        "skipped_steps": counters.skipped,
        **final,
        "curve": task.curve.points,
    }


@reports_storage_errors
def compare_excitation(
    config: ExciteConfig,
    out: str | Path,
    log: Callable[[str], None] = print,
    *,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Train every arm for every seed; write ``excitation.{md,csv,json}`` and ``report/`` (unless not
    ``report``: a sweep's cells) into ``out``.

    Returns the JSON's content: the config, the ``metric`` name, one row per arm (``rows``), every
    run with its evaluations (``runs``), and the markdown ``table``. ``resume=True`` continues the
    unfinished experiment in ``out``."""
    config.validate()
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log)
    bar = progress and sys.stderr.isatty() and ranks.main
    data = excite_data(config, device, bar)
    probe(config, data, device)  # a model that cannot run (or has no MoE layer) fails here, before anything is written
    LearningRate(config.lr, config.schedule, config.steps)  # and a schedule that gives no finite rates
    if config.compile:
        check_compiler(device)  # and a --compile backend that cannot compile at all
    if not resume:
        config.warn_unused()
    out = Path(out)
    command = resume_command("excite", out)
    open_run_dir("excite", out, run_config("excite", dataclasses.asdict(config)), command, resume=resume, ranks=ranks)
    log(
        f"{config.model} on {data.name}, {config.optimizer} lr {config.lr}, "
        f"{counted(config.steps, 'step')} of {config.batch_size}, arms {', '.join(config.arms)}, "
        f"seeds {config.seeds}; results in {out}"
    )
    runs = []
    board = out / TENSORBOARD if config.tensorboard and ranks.main else None  # rank 0 writes
    with StopRequests():  # a stop asked for as one run ends stops the next
        for seed in config.seeds:
            for arm in config.arms:
                name = excite_run_name(arm, seed)
                done = out / EXCITE_RUNS / f"{name}.json"
                if done.exists():
                    runs.append(json.loads(done.read_text()))
                    log(f"  {arm:>12} seed {seed}: finished before, read from {done}")
                    continue
                result = run_arm(
                    config,
                    data,
                    arm,
                    seed,
                    log,
                    checkpoints=Checkpoints(out / CHECKPOINTS / name, config.keep_checkpoints),
                    resume=resume,
                    ranks=ranks,
                    tensorboard_dir=board and board / name,  # a TensorBoard run each
                    interrupted=command,
                    progress=bar,
                )
                if ranks.main:
                    write_json(done, result)
                runs.append(result)
    rows = excitation_rows(runs, data.metric)
    table = excitation_markdown(rows, data.metric)
    result = {
        "seeking_version": __version__,
        "config": dataclasses.asdict(config),
        "metric": data.metric,
        "rows": rows,
        "runs": runs,
        "table": table,
    }
    if ranks.main:
        atomic_write_text(out / EXCITATION_MD, table + "\n")
        atomic_write_text(out / EXCITATION_CSV, excitation_csv(rows))
        write_json(out / EXCITATION_JSON, result)
        mark_complete(out)
        if report:
            from ..reporting.report import write_report  # imports matplotlib: not on every start of the CLI

            write_report([out], out / REPORT)
    return result
