"""Excitation experiments: one MoE model trained by a base optimizer, plain and wrapped in Excitation.

Every arm (``"none"`` = the plain optimizer, or an Excitation strategy) trains the same model from
the same initial weights on the same batches, for each seed, and is tested every ``eval_every_steps``
steps. Image data sets train classifiers (Micro-MoE, the deep sparse MLPs, ViT-MoE); a ``.txt``
file trains a character-level language model (GPT-MoE) and reports validation loss.

The results folder holds ``config.json``, one ``runs/<arm>-seed<seed>.json`` per finished run, the
checkpoints of the run in progress (``checkpoints/<arm>-seed<seed>/``), ``INCOMPLETE`` until all runs
are done, and then ``excitation.{md,csv,json}``. ``compare_excitation(..., resume=True)`` reads the
finished runs back and resumes the one in progress exactly. A step with a non-finite loss or gradient
is skipped (its routing counts dropped) and counted; ``max_nonfinite`` in a row stop the experiment.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..data import ImageData, batches, load_dataset, normalize
from ..data.core import run_splits
from ..data.text import TextBatches, TextData, load_text, text_batches
from ..data.transforms import EpochBatches
from ..errors import ConfigError, SeekingError
from ..excitation import Excitation
from ..io import atomic_write_text, write_json
from ..models import create_model
from ..models.gpt_moe import lm_loss
from ..models.registry import model_arguments
from ..moe import expert_layers, layer_utilization, moe_aux_loss, routing_metrics
from ..reporting.excitation import BASELINE, excitation_csv, excitation_markdown, excitation_rows
from ..reporting.tensorboard import ScalarLog
from ..wording import counted
from .config import ExciteConfig
from .distributed import Ranks, join, wrap
from .loop import step_outcome
from .optim import build_optimizer, lr_factor
from .preflight import claim_run_dir, probing, reports_storage_errors
from .resume import (
    Checkpoints,
    RunInterrupted,
    StopRequests,
    check_state,
    fitting,
    mark_complete,
    resume_command,
    rng_state,
    run_config,
    set_rng_state,
)


def _check_kind(config: ExciteConfig) -> None:
    """Refuse a language model on images or an image model on text (by whether it takes ``vocab_size``)."""
    arguments = model_arguments(config.model)
    if arguments is not None and ("vocab_size" in arguments) != config.is_text:
        kind = "a text file" if config.is_text else "an image data set"
        raise ConfigError(
            f"model {config.model!r} does not train on {kind}: GPT-MoE models train on a .txt file, "
            "the others on image data; check --model and --data"
        )


class _Task:
    """What differs between image classification and language modelling: data, model, loss, test."""

    def __init__(self, config: ExciteConfig, device: torch.device | None = None, progress: bool = False) -> None:
        self.config, self.progress = config, progress
        self.device = device = device or torch.device(config.device)
        if config.is_text:
            self.text: TextData = load_text(config.data)
            _check_kind(config)
            self.name, self.metric = self.text.name, "val loss"
            self.model_kwargs = {"vocab_size": self.text.vocab_size, "block_size": config.block_size}
            self.train_tokens, self.val_tokens = self.text.train.to(device), self.text.val.to(device)
            shortest = min(len(self.train_tokens), len(self.val_tokens))
            if shortest <= config.block_size:  # a block and its target, shifted by one, need block_size + 1
                fix = f"--block-size {shortest - 1} or less, or" if shortest > 1 else "a"
                raise ConfigError(
                    f"{config.data} gives {len(self.train_tokens)} training and {len(self.val_tokens)} validation "
                    f"characters (the last 10%); a block of {config.block_size} and its target need "
                    f"{config.block_size + 1} in each: use {fix} longer text"
                )
            blocks = len(self.train_tokens) - config.block_size  # distinct starting positions
            if config.batch_size > blocks:  # as for images: a batch no larger than the data it draws from
                raise ConfigError(
                    f"batch_size {config.batch_size} exceeds the {blocks} distinct blocks of {config.block_size} "
                    f"characters in the training text of {config.data}: lower --batch-size, or use longer text"
                )
        else:
            dataset = load_dataset(config.data, cache_dir=config.cache_dir, progress=progress)
            _check_kind(config)
            train, test = run_splits(dataset, config.train_subset, config.test_subset, config.batch_size, seed=0)
            self.dataset, self.name, self.metric = dataset, dataset.name, "test acc %"
            self.train = ImageData(train.images.to(device), train.labels.to(device))
            self.test_data = ImageData(test.images.to(device), test.labels.to(device))
            self.model_kwargs = {
                "num_classes": dataset.num_classes,
                "in_channels": dataset.in_channels,
                "image_size": list(dataset.image_size),
            }
        self.model_kwargs.update(config.model_kwargs)

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = create_model(self.config.model, **self.model_kwargs).to(self.device)
        if not expert_layers(model):
            raise ConfigError(
                f"model {self.config.model!r} has no MoE layer: Excitation needs a model with expert layers "
                "(micro_moe, sparse_mlp_deep10/20, vit_moe_tiny, gpt_moe_tiny, ...; see seeking.moe.protocol)"
            )
        return model

    def stream(self, seed: int) -> TextBatches | EpochBatches:
        """The training batches of one run: resumable (``state_dict``), endless, fixed by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        if self.config.is_text:
            return TextBatches(self.train_tokens, self.config.block_size, self.config.batch_size, generator)
        return EpochBatches(self.train, self.config.batch_size, generator)

    def probe(self, seed: int) -> None:
        """One training forward and backward of a fresh model on the first batch of ``seed``: a model that
        cannot take the data is a ``ConfigError`` naming the fix, before anything is written."""
        model = self.build(seed)
        x, y = next(self.stream(seed))
        data = f"the {'text' if self.config.is_text else 'images'} of {self.name}"
        with probing(self.config.model, model, tuple(x.shape), data):
            (self.loss(model(self.inputs(x)), y) + moe_aux_loss(model)).backward()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.is_text else normalize(x, self.dataset.mean, self.dataset.std)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lm_loss(output, target) if self.config.is_text else F.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, dict[str, Any]]:
        """The task metric and the routing metrics of the last test batch (with its labels), with the
        per-expert utilization of each layer."""
        model.eval()
        if self.config.is_text:
            gen = torch.Generator().manual_seed(1234)  # the same validation blocks for every arm and step
            chosen = itertools.islice(text_batches(self.val_tokens, self.config.block_size, 64, gen), 8)
            losses = []
            for x, y in chosen:
                losses.append(lm_loss(model(x), y).item())
                labels = y
            value = sum(losses) / len(losses)
        else:
            correct = 0
            for images, labels in batches(self.test_data, 500, shuffle=False):
                correct += (model(self.inputs(images)).argmax(1) == labels).sum().item()
            value = 100.0 * correct / len(self.test_data)
        metrics = routing_metrics(model, labels)
        model.train()
        return value, {**{k: v for k, v in metrics.items() if "/" not in k}, "utilization": layer_utilization(model)}


@dataclass
class ArmProgress:
    """One run's counters, as a checkpoint holds them."""

    step: int = 0
    loss_sum: float = 0.0  # finite training losses since the last evaluation
    loss_count: int = 0
    skipped: int = 0
    nonfinite_run: int = 0
    step_seconds: float = 0.0  # in optimizer.step()
    wall_seconds: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)


def run_arm(
    task: _Task,
    arm: str,
    seed: int,
    log: Callable[[str], None],
    *,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
    stop: StopRequests | None = None,
    ranks: Ranks | None = None,
    tensorboard_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one arm for one seed; returns its final and periodic results (and TensorBoard scalars
    under ``tensorboard_dir`` if given).

    With ``checkpoints``, a checkpoint is written at each evaluation (and every ``checkpoint_every``
    steps); ``resume`` starts from the newest one; a ``stop`` request writes one and raises
    :class:`RunInterrupted`. Under torchrun (``ranks``) each process trains on its shard of every batch
    in DistributedDataParallel, and rank 0 alone writes checkpoints."""
    config = task.config
    ranks = ranks or Ranks()
    model = task.build(seed)
    optimizer = build_optimizer(
        config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if arm != BASELINE:
        optimizer = Excitation(optimizer, model, arm, config.gamma, seed=seed)
    stream = task.stream(seed)
    identity = {**dataclasses.asdict(config), "arm": arm, "seed": seed}
    run = ArmProgress()
    state = checkpoints.latest(warn=log) if checkpoints and resume else None
    if state is not None:
        check_state(state, identity, checkpoints.folder)
        with fitting(checkpoints.folder, config.model):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        set_rng_state(state["rng"])
        run = ArmProgress(**state["progress"])
        log(f"  {arm:>12} seed {seed}: resuming at step {run.step}")

    def save_checkpoint() -> None:
        if not ranks.main:
            return
        checkpoints.save(
            run.step,
            {
                "seeking_version": __version__,
                "config": identity,
                "progress": dataclasses.asdict(run),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "stream": stream.state_dict(),
                "rng": rng_state(),
            },
        )

    layers = expert_layers(model)
    net = wrap(model, ranks, task.device, find_unused=True)  # a user's MoE layer may skip unused experts
    start = time.perf_counter() - run.wall_seconds
    stopping = False  # agreed by all processes at the last step
    board = ScalarLog(tensorboard_dir, purge_step=run.step)
    bar = tqdm(
        total=config.steps,
        initial=run.step,
        desc=f"{arm} seed {seed}",
        unit="step",
        leave=False,
        disable=not task.progress,
    )
    shown: dict[str, str] = {"loss": "-"}  # on the bar: the step's loss, the metric and dead experts of the last test
    while run.step < config.steps:
        if stopping:
            if checkpoints:
                run.wall_seconds = time.perf_counter() - start
                save_checkpoint()
            requested = stop.requested if stop is not None else None
            raise RunInterrupted(f"{requested or 'a stop request'} during {arm} seed {seed} at step {run.step}")
        step = run.step + 1
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(config.schedule, step - 1, config.steps, 0)
        x, y = next(stream)  # the global batch; this process trains on its shard
        x, y = ranks.shard(x), ranks.shard(y)
        with torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=config.amp):
            loss = task.loss(net(task.inputs(x)), y)
        optimizer.zero_grad(set_to_none=True)
        (loss + moe_aux_loss(model)).backward()
        # the guard's one host sync per step, with the all-reduce that keeps the processes agreed
        loss_value, finite, stopping = step_outcome(loss, model, ranks, stop is not None and stop.requested is not None)
        if finite:
            tick = time.perf_counter()
            optimizer.step()
            run.step_seconds += time.perf_counter() - tick
            run.loss_sum += loss_value
            run.loss_count += 1
            run.nonfinite_run = 0
        else:  # skipped, and its routing counts with it, so they do not weigh on the next step
            for layer in layers:
                layer.expert_counts.zero_()
            run.skipped += 1
            run.nonfinite_run += 1
            if run.nonfinite_run >= config.max_nonfinite:
                raise SeekingError(
                    f"{arm} seed {seed} diverged: {run.nonfinite_run} non-finite losses or gradients in a row "
                    f"(last at step {step}); lower --lr, or raise --max-nonfinite"
                )
        run.step = step
        evaluated = step % config.eval_every_steps == 0 or step == config.steps
        if evaluated:
            value, metrics = task.evaluate(model)
            train_loss = run.loss_sum / run.loss_count if run.loss_count else math.nan
            run.loss_sum, run.loss_count = 0.0, 0
            phi = [f.tolist() for f in optimizer.last_factors] if arm != BASELINE else None
            run.curve.append({"step": step, "train_loss": train_loss, task.metric: value, **metrics, "phi": phi})
            board.write("eval", step, run.curve[-1])
            dead = metrics.get("dead_fraction", math.nan)
            shown |= {task.metric: f"{value:.3g}", "dead": f"{dead:.3f}"}
            with tqdm.external_write_mode(file=sys.stderr):  # the line goes above the bar, not through it
                log(
                    f"  {arm:>12} seed {seed} step {step}/{config.steps}  train loss {train_loss:.4f}  "
                    f"{task.metric} {value:.4f}  dead {dead:.3f}"
                )
        shown["loss"] = f"{loss_value:.3f}"
        bar.update()
        bar.set_postfix(shown, refresh=False)
        periodic = config.checkpoint_every and step % config.checkpoint_every == 0
        if checkpoints and step < config.steps and (evaluated or periodic):
            run.wall_seconds = time.perf_counter() - start
            save_checkpoint()
    board.close()
    bar.close()
    return {
        "arm": arm,
        "seed": seed,
        "wall_seconds": time.perf_counter() - start,
        "optimizer_step_ms": 1000 * run.step_seconds / config.steps,
        "skipped_steps": run.skipped,
        **{k: v for k, v in run.curve[-1].items() if k != "step"},
        "curve": run.curve,
    }


@reports_storage_errors
def compare_excitation(
    config: ExciteConfig,
    out: str | Path,
    log: Callable[[str], None] = print,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every arm for every seed; write ``excitation.{md,csv,json}`` and ``report/`` into ``out``.

    Returns the JSON's content: the config, the ``metric`` name, one row per arm (``rows``), every
    run with its evaluations (``runs``), and the markdown ``table``. ``resume=True`` continues the
    unfinished experiment in ``out``."""
    config.validate()
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log)
    task = _Task(config, device, progress=progress and sys.stderr.isatty() and ranks.main)
    task.probe(config.seeds[0])  # a model that cannot run (or has no MoE layer) fails here, before anything is written
    out = Path(out)
    if resume:
        if (out / "excitation.json").exists():
            raise ConfigError(f"cannot resume {out}: the experiment is complete (it has excitation.json)")
    else:
        claim_run_dir(out, run_config("excite", dataclasses.asdict(config)), resume_command("excite", out), ranks)
    log(
        f"{config.model} on {task.name}, {config.optimizer} lr {config.lr}, {counted(config.steps, 'step')} of "
        f"{config.batch_size}, arms {', '.join(config.arms)}, seeds {config.seeds}; results in {out}"
    )
    runs = []
    board = out / "tensorboard" if config.tensorboard and ranks.main else None  # rank 0 writes
    with StopRequests() as stop:
        for seed in config.seeds:
            for arm in config.arms:
                done = out / "runs" / f"{arm}-seed{seed}.json"
                if done.exists():
                    runs.append(json.loads(done.read_text()))
                    log(f"  {arm:>12} seed {seed}: finished before, read from {done}")
                    continue
                checkpoints = Checkpoints(out / "checkpoints" / f"{arm}-seed{seed}", config.keep_checkpoints)
                try:
                    result = run_arm(
                        task,
                        arm,
                        seed,
                        log,
                        checkpoints=checkpoints,
                        resume=resume,
                        stop=stop,
                        ranks=ranks,
                        tensorboard_dir=board and board / f"{arm}-seed{seed}",  # a TensorBoard run each
                    )
                except RunInterrupted as exc:
                    raise RunInterrupted(exc.event, resume_command("excite", out)) from None
                if ranks.main:
                    write_json(done, result)
                runs.append(result)
    rows = excitation_rows(runs, task.metric)
    table = excitation_markdown(rows, task.metric)
    result = {
        "seeking_version": __version__,
        "config": dataclasses.asdict(config),
        "metric": task.metric,
        "rows": rows,
        "runs": runs,
        "table": table,
    }
    if ranks.main:
        atomic_write_text(out / "excitation.md", table + "\n")
        atomic_write_text(out / "excitation.csv", excitation_csv(rows))
        write_json(out / "excitation.json", result)
        mark_complete(out)
        from ..reporting.report import write_report  # imports matplotlib: not on every start of the CLI

        write_report([out], out / "report")
    return result
