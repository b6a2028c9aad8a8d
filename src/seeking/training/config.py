"""Training configuration: one vocabulary of fields, validated before anything runs or is written.

:class:`RunConfig` holds the fields every trainer has; :class:`TrainConfig` (``seeking train`` and
``compare``) and :class:`ExciteConfig` (``seeking excite``) add their own. Each field is declared with
:func:`option`: its default, its command-line help, its argument group and, for a closed set, its
choices (a registry, read when used). The command line is generated from these fields, so a new
option is one field.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..data import data_source
from ..errors import ConfigError, SeekingWarning, unknown_choice
from ..excitation import list_strategies
from ..models.registry import model_exists, model_folder, unknown_model_message
from ..motivation import (
    BATCHNORM_POLICIES,
    CONDITIONS,
    DEFAULT_SYNC,
    OPTIMIZER_STATE_POLICIES,
    SYNC_MODES,
    run_models,
)
from ..reporting.excitation import BASELINE
from ..reporting.tensorboard import require_tensorboard
from .engine import compile_backend
from .optim import OPTIMIZERS, SCHEDULES, build_optimizer, with_momentum

# the argument groups of the command line, in the order --help shows them
GROUPS = ("data and models", "motivation", "excitation", "optimisation", "run")
Choices = Iterable[str] | Callable[[], Iterable[str]]
C = TypeVar("C", bound="RunConfig")


def option(
    default: Any = MISSING,
    *,
    help: str,
    group: str,
    choices: Choices | None = None,
    noun: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A configuration field, for ``name: type = option(...)`` in a config dataclass.

    ``default``: a list or dict is copied for each configuration; none: a subclass gives it (see
    :func:`override`). ``help``: the command-line help; ``{choices}`` becomes the choices and
    ``{default}`` the default, which the CLI otherwise appends. ``group``: one of :data:`GROUPS`.
    ``choices``: the closed set of values (a registry, a tuple, or a function returning one), read
    when used, so a later registration counts; ``validate`` refuses other values, naming one value
    ``noun`` (default: the field's name). ``metavar``: the value's name in ``--help``."""
    if group not in GROUPS:
        raise ValueError(f"unknown argument group {group!r}; choose one of: {', '.join(GROUPS)}")
    metadata = {"help": help, "group": group, "choices": choices, "noun": noun, "metavar": metavar}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(name: str, default: Any = MISSING, **changes: Any) -> Any:
    """The :class:`RunConfig` field ``name``, redeclared in a subclass with this command's ``default``
    and the given ``changes`` of :func:`option`'s other arguments (e.g. ``help``)."""
    return option(default, **{**RunConfig.__dataclass_fields__[name].metadata, **changes})


def field_choices(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The choices of ``field`` as they are now, or ``None`` for an open field."""
    given = field.metadata.get("choices")
    if given is None:
        return None
    return tuple(given() if callable(given) else given)


@dataclass(kw_only=True)
class RunConfig:
    """The fields every trainer has. Its subclasses give the defaults that differ between trainers
    (``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``schedule``, ``batch_size``)."""

    # constructor arguments that come from the data set, never from model_kwargs
    data_kwargs: ClassVar[tuple[str, ...]] = ("num_classes", "in_channels", "image_size", "vocab_size", "block_size")
    # options that only image data uses (a text run warns that they do nothing)
    image_only: ClassVar[tuple[str, ...]] = ("train_subset", "test_subset", "holdout", "cache_dir", "channels_last")
    # options that only text data uses (an image run warns that they do nothing)
    text_only: ClassVar[tuple[str, ...]] = ("block_size", "tokenizer")

    data: str = option(
        "digits",
        help="'digits' (embedded default), or the path of a CIFAR-10/100 python folder or .tar.gz, or of a "
        "class-folder tree train/<class>/*, test/<class>/* (folder or .tar.gz)",
        group="data and models",
    )
    model_kwargs: dict[str, Any] = option(  # noqa: RUF009 (a dataclass field)
        {},
        help="JSON object of extra constructor arguments for both models, e.g. '{\"patch_size\": 4}'",
        group="data and models",
    )
    train_subset: int | None = option(
        None, help="use this many training images (class-stratified)", group="data and models"
    )
    test_subset: int | None = option(None, help="use this many test images (class-stratified)", group="data and models")
    holdout: int | None = option(
        None,
        help="hold N training images out (class-stratified, the same for every seed) and test on them instead "
        "of the test set: a validation run for choosing settings (seeking sweep); --test-subset then cuts them",
        group="data and models",
        metavar="N",
    )
    cache_dir: str | None = option(
        None,
        help="where decoded image folders are cached (default: $SEEKING_CACHE_DIR or ~/.cache/seeking)",
        group="data and models",
    )
    block_size: int = option(
        64, help="tokens per training sequence of a language model (text data only)", group="data and models"
    )
    tokenizer: str | None = option(
        None,
        help="a local Hugging Face tokenizer folder (save_pretrained's output, e.g. the model's own; loaded "
        "offline) that encodes the text; default: one token per character (text data only)",
        group="data and models",
    )
    optimizer: str = option(
        help="torch.optim's optimizer of that name; nesterov: SGD with Nesterov momentum (plain SGD at momentum 0)",
        group="optimisation",
        choices=OPTIMIZERS,
    )
    lr: float = option(help="peak learning rate (the schedule's maximum)", group="optimisation")
    momentum: float = option(
        help=f"momentum of {', '.join(with_momentum())}; the other optimizers take none", group="optimisation"
    )
    weight_decay: float = option(help="weight decay, as the optimizer applies it", group="optimisation")
    schedule: str = option(
        help="learning rate per step: cosine: warmup, then cosine decay to 0; onecycle: warmup over 30% of the "
        "run from 1/25 of the peak, then cosine decay to 0; constant: warmup, then the peak",
        group="optimisation",
        choices=SCHEDULES,
    )
    batch_size: int = option(help="examples per training step (under torchrun: of all processes)", group="optimisation")
    device: str = option("cpu", help="cpu, cuda, cuda:1, ...", group="run")
    amp: bool = option(
        False, help="bfloat16 autocast of the training forward pass, on CUDA (or CPU, which is slow)", group="run"
    )
    channels_last: bool = option(False, help="channels-last memory format (faster convolutions on GPUs)", group="run")
    compile: bool = option(
        False,
        help="torch.compile the training forward pass and loss, each model once (backend: $SEEKING_COMPILE_BACKEND, "
        "default inductor, which needs a C++ compiler on CPU); models and checkpoints stay as without it",
        group="run",
    )
    max_nonfinite: int = option(
        10,
        help="a step with a non-finite loss or gradient is skipped; stop after this many in a row",
        group="run",
    )
    checkpoint_every: int = option(
        0,
        help="also write a checkpoint every STEPS steps (0: only at the usual points: each epoch's end for train, "
        "each evaluation for excite, and on Ctrl-C)",
        group="run",
        metavar="STEPS",
    )
    keep_checkpoints: int = option(
        1, help="keep the last N checkpoints in the run folder's checkpoints/", group="run", metavar="N"
    )
    tensorboard: bool = option(
        False,
        help="also write TensorBoard event files under the run folder's tensorboard/ (needs seeking[tensorboard])",
        group="run",
    )

    gamma: float = option(1.0, help="Excitation's utilization exponent", group="excitation")

    def validate(self: C) -> C:
        """``self`` if every field holds a value of its type and range, else a ``ConfigError`` naming
        the first one that does not; a subclass checks its own fields after these."""
        check_types(self)
        self._absolute_paths()
        for f in fields(self):
            allowed = field_choices(f)
            value = getattr(self, f.name)
            for one in value if isinstance(value, list) else [value]:
                if allowed is not None and one not in allowed:
                    raise unknown_choice(f.metadata["noun"] or f.name, one, allowed)
        reserved = sorted(set(self.data_kwargs) & set(self.model_kwargs))
        if reserved:
            raise ConfigError(
                f"model_kwargs must not set {', '.join(reserved)}: they come from the data set (a language model's "
                "block_size from --block-size)"
            )
        if self.max_nonfinite < 1:
            raise ConfigError(
                f"max_nonfinite (non-finite losses in a row before stopping) must be >= 1, got {self.max_nonfinite}"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every must be >= 0 steps (0: the default points), got {self.checkpoint_every}"
            )
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1 (resuming needs one), got {self.keep_checkpoints}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {self.block_size}")
        # at lr 0 no weight moves, yet the run would report accuracies and costs as if it had trained
        if self.lr <= 0:
            why = ": at 0 no weight would move" if self.lr == 0 else ""
            raise ConfigError(f"lr must be > 0, got {self.lr}{why}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "holdout"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but CUDA is not available here; use --device cpu")
        if not self.gamma > 0 or not math.isfinite(self.gamma):
            raise ConfigError(f"gamma must be a finite number > 0, got {self.gamma}")
        if self.tensorboard:
            require_tensorboard()
        if self.compile:
            compile_backend()
        return self

    # the fields that may name a local model folder (made absolute like the paths)
    model_fields: ClassVar[tuple[str, ...]] = ()

    def _absolute_paths(self) -> None:
        """Paths as the run records them, absolute, so that ``--resume`` and the saved files work from any
        working folder: the data (not a data set's name), the tokenizer, and model folders (not model names)."""
        self.data = data_source(self.data)
        if self.tokenizer is not None:
            self.tokenizer = os.path.abspath(Path(self.tokenizer).expanduser())

        def absolute(model: str) -> str:
            return os.path.abspath(Path(model).expanduser()) if model_folder(model) is not None else model

        for name in self.model_fields:
            value = getattr(self, name)
            setattr(self, name, [absolute(v) for v in value] if isinstance(value, list) else absolute(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build_optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        """The configured optimizer (``optimizer``, ``lr``, ``momentum``, ``weight_decay``) over ``params``."""
        return build_optimizer(
            self.optimizer, params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def changed(self, name: str) -> bool:
        """Whether field ``name`` differs from its default (the user set it)."""
        field = next(f for f in fields(self) if f.name == name)
        default = field.default if field.default is not MISSING else field.default_factory()  # type: ignore[misc]
        return getattr(self, name) != default

    def unused_options(self) -> list[str]:
        """What the user set that this run will not use, one sentence each: nothing is ignored silently
        (the command line prints each as a warning)."""
        from .tasks import data_kind  # the data task's registry says what the data is

        unused = []
        if self.changed("momentum") and self.momentum and self.optimizer not in with_momentum():
            unused.append(f"--momentum does nothing with --optimizer {self.optimizer}, which takes none")
        text = data_kind(self.data) == "text"
        for name in self.image_only if text else self.text_only:
            if self.changed(name):
                unused.append(f"--{name.replace('_', '-')} does nothing with {'text' if text else 'image'} data")
        return unused

    def warn_unused(self) -> None:
        """A :class:`~seeking.errors.SeekingWarning` for each of :meth:`unused_options` (the trainers
        call it once their checks pass, before anything is written)."""
        for sentence in self.unused_options():
            warnings.warn(sentence, SeekingWarning, stacklevel=3)

    @classmethod
    def from_dict(cls: type[C], values: Any) -> C:
        """A validated configuration from a mapping: unknown keys, wrong types, bad values are ``ConfigError`` s."""
        if not isinstance(values, dict):
            raise ConfigError(
                f"a configuration must be a mapping of option names to values, got {type(values).__name__}"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown configuration key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(names))}"
            )
        return cls(**values).validate()


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Everything that defines a run. Defaults give the embedded demo (digits, ResNet-20 -> 32).

    ``condition``: ``decrease`` (motivation training, rule of METHODS.md with ``k``), ``random``
    (the control: exactly ``round(p * steps)`` steps on the large model, at random positions),
    ``never`` (classical base) or ``always`` (classical large model).
    A checkpoint for resuming is written at the end of every epoch, and every ``checkpoint_every``
    steps if that is not 0; the last ``keep_checkpoints`` are kept.
    """

    image_only: ClassVar[tuple[str, ...]] = (*RunConfig.image_only, "crop_padding")
    model_fields: ClassVar[tuple[str, ...]] = ("base", "intermediate", "motivated")
    # the fields a condition may read (its ``options``; seeking.motivation.make_condition)
    condition_options: ClassVar[tuple[str, ...]] = ("k", "p", "window", "z", "flops_saving", "epsilon")

    data: str = override(
        "data",
        "digits",
        help="image data set ('digits' embedded default, CIFAR-10/100 python folder or .tar.gz, class-folder "
        "tree train/<class>/*, test/<class>/*), or a UTF-8 .txt file (only the .txt suffix is read as text) for a "
        "language model pair (gpt_2l, gpt_4l, gpt_8l, hf_<family>_tiny, transformers folders; one token per "
        "character unless --tokenizer)",
    )
    base: str = option(
        "resnet20",
        help="small model, trained on every non-motivated batch: a model name (seeking models) or a local "
        "transformers folder (save_pretrained's output; ./NAME where a folder has a model's name)",
        group="data and models",
    )
    motivated: str = option(
        "resnet32", help="large model that contains the base (a name or a folder, as --base)", group="data and models"
    )
    intermediate: list[str] = option(  # noqa: RUF009 (a dataclass field)
        [],
        help="a chain (train once, deploy N): the models between --base and --motivated, smallest first, each "
        "containing the one before (--pair A:B:C sets it to B)",
        group="data and models",
        metavar="MODEL",
    )
    condition: str = option(
        "decrease",
        help="decrease: the loss rule; random: control, round(p * steps) large-model steps at random; "
        "never: classical base; always: large model alone; trend: the loss falls significantly (--window, "
        "--z); budget: an exact share of steps (--p or --flops-saving) where the loss falls fastest; value: "
        "a bandit on loss drop per FLOP (--window, --epsilon)",
        group="motivation",
        choices=CONDITIONS,
    )
    k: int = option(2, help="consecutive loss decreases that start an episode", group="motivation")
    p: float = option(
        0.2,
        help="random condition: exactly round(p * steps) steps train the large model, at random; budget: its "
        "share (default: {default}; compare's random control takes the motivated run's count instead)",
        group="motivation",
    )
    window: int = option(
        10, help="trend, budget, value: losses in the slope window (value: its averaging horizon)", group="motivation"
    )
    z: float = option(2.0, help="trend: the slope's t statistic must be below -z", group="motivation")
    flops_saving: float | None = option(
        None,
        help="budget: the run's training FLOPs are the large model's alone divided by this (instead of --p)",
        group="motivation",
    )
    epsilon: float = option(0.1, help="value: the bandit's exploration rate", group="motivation")
    optimizer_state: str = option(
        "carried",
        help="optimizer state of shared weights at a switch",
        group="motivation",
        choices=OPTIMIZER_STATE_POLICIES,
    )
    batchnorm: str = option(
        "separate", help="BatchNorm running statistics of shared layers", group="motivation", choices=BATCHNORM_POLICIES
    )
    bn_recalibrate: int = option(
        20,
        help="re-estimate BatchNorm statistics on N training batches before each test and for the saved models; "
        "0: keep them as trained",
        group="motivation",
        metavar="N",
    )
    sync: str = option(
        DEFAULT_SYNC,
        help="share the shared weights and their optimizer state zero-copy where their regions are contiguous, "
        "or copy them at each switch (the same results, bit for bit)",
        group="motivation",
        choices=SYNC_MODES,
    )
    excitation: str = option(
        BASELINE,
        help="'none', or an Excitation strategy that wraps both models' optimizers (MoE models: gpt_moe_*, "
        "transformers MoE folders...): {choices}",
        group="excitation",
        choices=lambda: (BASELINE, *list_strategies()),
        noun="strategy",
    )
    optimizer: str = override("optimizer", "nesterov")
    lr: float = override("lr", 0.05)
    momentum: float = override("momentum", 0.9)
    weight_decay: float = override("weight_decay", 5e-4)
    schedule: str = override("schedule", "cosine")
    batch_size: int = override("batch_size", 64)
    epochs: int = option(15, help="passes over the training set", group="optimisation")
    warmup_epochs: float = option(
        1.0, help="epochs of linear learning-rate warmup (onecycle sets its own)", group="optimisation"
    )
    crop_padding: int | None = option(
        None, help="random-crop padding in pixels (default: image size / 8)", group="optimisation"
    )
    checkpoint_every: int = override(
        "checkpoint_every",
        0,
        help="also write a checkpoint every STEPS steps (one is always written at the end of each epoch)",
    )
    seed: int = option(
        0, help="seed of the weights, subsets, batch order, augmentation and random condition", group="run"
    )
    eval_every_epochs: int = option(1, help="test every N epochs; 0: only at the end", group="run")

    def unused_options(self) -> list[str]:
        unused = super().unused_options()
        condition = CONDITIONS[self.condition]
        for name in self.condition_options:
            if self.changed(name) and name not in condition.options:
                unused.append(f"--{name.replace('_', '-')} does nothing with --condition {self.condition}")
        if {"p", "flops_saving"} <= set(condition.options) and self.changed("p") and self.changed("flops_saving"):
            unused.append("--p does nothing with --flops-saving, which sets the share of large-model steps")
        if len(condition.roles) == 1:  # one model: nothing is shared
            for name in ("sync", "batchnorm", "optimizer_state", "intermediate"):
                if self.changed(name):
                    unused.append(
                        f"--{name.replace('_', '-')} does nothing with --condition {self.condition}, "
                        "which trains one model"
                    )
        if self.changed("gamma") and self.excitation == BASELINE:
            unused.append("--gamma does nothing without --excitation")
        if self.warmup_epochs > self.epochs:
            unused.append(
                f"--warmup-epochs {self.warmup_epochs} is longer than the run's {self.epochs} epochs: "
                "the learning rate never reaches --lr"
            )
        return unused

    def model_names(self) -> dict[str, str]:
        """The models this run trains, by role (its condition's roles; a chain's intermediate levels
        ``level1``... when both ends train: :func:`~seeking.motivation.run_models`)."""
        return run_models([self.base, *self.intermediate, self.motivated], CONDITIONS[self.condition].roles)

    def validate(self) -> TrainConfig:
        super().validate()
        for role in ("base", "motivated"):
            if not model_exists(getattr(self, role)):
                raise ConfigError(unknown_model_message(getattr(self, role), role))
        for name in self.intermediate:
            if not model_exists(name):
                raise ConfigError(unknown_model_message(name, "intermediate"))
        if self.intermediate and CONDITIONS[self.condition].counts_run_steps:
            raise ConfigError(
                f"the {self.condition} condition places an exact count of steps among a run's steps; a chain's pairs "
                f"see only their own steps, so it is not built for chains (--intermediate "
                f"{' '.join(self.intermediate)}): use it on a pair"
            )
        if self.k < 1:
            raise ConfigError(f"k (consecutive loss decreases before switching) must be >= 1, got {self.k}")
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p (the random condition's share of large-model steps) must be in [0, 1], got {self.p}")
        if self.window < 3:
            raise ConfigError(f"window (losses in the slope window) must be >= 3, got {self.window}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"epsilon (the value condition's exploration rate) must be in [0, 1], got {self.epsilon}")
        if self.flops_saving is not None and self.flops_saving < 1.0:
            raise ConfigError(
                f"flops_saving (the large model's FLOPs over the run's) must be >= 1, got {self.flops_saving}"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("warmup_epochs", "eval_every_epochs", "bn_recalibrate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be positive, got {self.crop_padding}")
        return self


@dataclass(kw_only=True)
class ExciteConfig(RunConfig):
    """One Excitation experiment. Defaults: Micro-MoE on the embedded digits, SGD, three arms.

    ``arms``: ``"none"`` (the plain optimizer) and/or Excitation strategies (``zero_sum``,
    ``positive_sum``, ``exp_diff`` and the controls ``global``, ``random``, ``inverted``).
    ``momentum`` is used by SGD and RMSprop. ``block_size`` is for text data only. A checkpoint of
    the run in progress is written at each evaluation and every ``checkpoint_every`` steps if not 0.
    ``amp``: the training forward under bfloat16 autocast (as ``seeking train --amp``, without a
    gradient scaler, which bfloat16 does not need; routing stays float32), on CUDA or, slowly, CPU.
    """

    model_fields: ClassVar[tuple[str, ...]] = ("model",)

    data: str = override(
        "data",
        "digits",
        help="image data set as for train ('digits', CIFAR, class folders), or a UTF-8 .txt file for GPT-MoE "
        "(character level)",
    )
    model_kwargs: dict[str, Any] = override(  # noqa: RUF009 (a dataclass field)
        "model_kwargs", {}, help="JSON object of constructor arguments, e.g. '{\"width\": 64}'"
    )
    model: str = option(
        "micro_moe",
        help="an MoE model: micro_moe, sparse_mlp_deep10, sparse_mlp_deep20, vit_moe_tiny (images); gpt_moe_tiny, "
        "gpt_moe_small, hf_<family>_tiny (text; families: mixtral, qwen2_moe, qwen3_moe, olmoe, gpt_oss, "
        "deepseek_v3; see seeking models), or a local transformers MoE folder (save_pretrained's output, "
        "its weights included)",
        group="data and models",
    )
    arms: list[str] = option(  # noqa: RUF009 (a dataclass field)
        [BASELINE, "zero_sum", "positive_sum"],
        help="'none' (the plain optimizer) and Excitation strategies, any of: {choices}",
        group="excitation",
        choices=lambda: (BASELINE, *list_strategies()),
        noun="strategy",
        metavar="ARM",
    )
    optimizer: str = override("optimizer", "sgd")
    lr: float = override("lr", 0.1)
    momentum: float = override("momentum", 0.0)
    weight_decay: float = override("weight_decay", 0.0)
    schedule: str = override("schedule", "constant")
    batch_size: int = override("batch_size", 128)
    steps: int = option(600, help="training steps of each arm and seed", group="optimisation")
    checkpoint_every: int = override(
        "checkpoint_every",
        0,
        help="also write a checkpoint every STEPS steps (one is always written at each evaluation)",
    )
    seeds: list[int] = option([0, 1, 2], help="one run of every arm per seed", group="run")  # noqa: RUF009 (option makes a dataclass field)
    eval_every_steps: int = option(100, help="test every N steps (and after the last)", group="run")

    def unused_options(self) -> list[str]:
        unused = super().unused_options()
        if self.changed("gamma") and self.arms == [BASELINE]:
            unused.append("--gamma does nothing without an Excitation arm (--arms none alone)")
        return unused

    def validate(self) -> ExciteConfig:
        super().validate()
        if not model_exists(self.model):
            raise ConfigError(unknown_model_message(self.model))
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms must name each arm once and at least one, got {self.arms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        for name in ("steps", "eval_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


def field_annotation(field: dataclasses.Field) -> str:
    """The annotation of ``field`` as written: 'int', 'float | None', 'list[str]', 'dict[str, Any]'
    (a class without ``from __future__ import annotations`` holds types, not strings)."""
    annotation = field.type
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def check_types(config: Any) -> None:
    """Every field of the dataclass ``config`` has its annotated type, or a ``ConfigError`` says which not."""
    for f in fields(config):
        _check_type(f.name, getattr(config, f.name), field_annotation(f))


_SCALARS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
# what each annotated type is called in a message, and for lists, its elements
_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
_PLURAL_WORDS = {"int": "integers", "float": "numbers", "str": "strings", "bool": "booleans"}


def _is(value: Any, base: str) -> bool:
    if not isinstance(value, _SCALARS[base]) or (base != "bool" and isinstance(value, bool)):
        return False
    return base != "float" or math.isfinite(value)  # a NaN would slip through every range check


def _described(annotation: str) -> str:
    """``annotation`` in words: 'float | None' -> 'a finite number, or null'."""
    base = annotation.removesuffix(" | None")
    if base == "dict[str, Any]":
        words = "a JSON object with string keys"
    elif base.startswith("list["):
        words = f"a list of {_PLURAL_WORDS[base[5:-1]]}"
    else:
        words = _WORDS[base]
    words = words.replace("number", "finite number", 1) if "float" in base else words
    return f"{words}, or null" if annotation.endswith("| None") else words


def _check_type(name: str, value: Any, annotation: str) -> None:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix(" | None")
    if value is None and optional:
        return
    if base == "dict[str, Any]":
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    elif base.startswith("list["):
        ok = isinstance(value, list) and all(_is(v, base[5:-1]) for v in value)
    else:
        ok = _is(value, base)
    if not ok:
        number = isinstance(value, int | float) and not isinstance(value, bool)  # its repr says what it is
        shown = repr(value) if number else f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"{name} must be {_described(annotation)}, got {shown}")
