"""Training configuration: one flat dataclass, validated before anything runs or is written."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import ConfigError
from ..models.registry import model_exists, unknown_model_message
from ..motivation import BATCHNORM_POLICIES, OPTIMIZER_STATE_POLICIES, SYNC_MODES
from ..motivation import CONDITIONS as CONDITION_TYPES
from ..reporting.tensorboard import require_tensorboard

CONDITIONS = tuple(CONDITION_TYPES)
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults give the embedded demo (digits, ResNet-20 -> 32).

    ``condition``: ``decrease`` (motivation training, rule of METHODS.md with ``k``), ``random``
    (the control: exactly ``round(p * steps)`` steps on the large model, at random positions),
    ``never`` (classical base) or ``always`` (classical large model).
    A checkpoint for resuming is written at the end of every epoch, and every ``checkpoint_every``
    steps if that is not 0; the last ``keep_checkpoints`` are kept.
    """

    data: str = "digits"
    base: str = "resnet20"
    motivated: str = "resnet32"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    condition: str = "decrease"
    k: int = 2
    p: float = 0.2
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    optimizer_state: str = "carried"
    batchnorm: str = "separate"
    bn_recalibrate: int = 20
    sync: str = "copy"
    crop_padding: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    eval_every: int = 1
    max_nonfinite: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = False
    amp: bool = False
    cache_dir: str | None = None
    tensorboard: bool = False

    def validate(self) -> TrainConfig:
        check_types(self)
        for role in ("base", "motivated"):
            if not model_exists(getattr(self, role)):
                raise ConfigError(unknown_model_message(getattr(self, role), role))
        reserved = sorted({"num_classes", "in_channels", "image_size"} & set(self.model_kwargs))
        if reserved:
            raise ConfigError(f"model_kwargs must not set {', '.join(reserved)}: they come from the data set")
        _choice("condition", self.condition, CONDITIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("optimizer_state", self.optimizer_state, OPTIMIZER_STATE_POLICIES)
        _choice("batchnorm", self.batchnorm, BATCHNORM_POLICIES)
        _choice("sync", self.sync, SYNC_MODES)
        check_checkpointing(self)
        if self.k < 1:
            raise ConfigError(f"k (consecutive loss decreases before switching) must be >= 1, got {self.k}")
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p (the random condition's share of large-model steps) must be in [0, 1], got {self.p}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_lr(self.lr)
        for name in ("momentum", "weight_decay", "warmup_epochs", "eval_every", "bn_recalibrate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "crop_padding"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "crop_padding" else 1):
                raise ConfigError(f"{name} must be positive, got {value}")
        check_device(self.device)
        if self.amp and not self.device.startswith("cuda"):
            raise ConfigError("amp (bfloat16 autocast) is for CUDA devices; drop --amp or use --device cuda")
        if self.tensorboard:
            require_tensorboard()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, values)


def config_from_dict(cls: type, values: Any) -> Any:
    """A validated ``cls`` dataclass from a mapping: unknown keys, wrong types, bad values are ``ConfigError`` s."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a mapping of option names to values, got {type(values).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(names))}")
    return cls(**values).validate()


def check_checkpointing(config: Any) -> None:
    """The fields shared by both configurations: ``checkpoint_every``, ``keep_checkpoints``, ``max_nonfinite``."""
    if config.max_nonfinite < 1:
        raise ConfigError(
            f"max_nonfinite (non-finite losses in a row before stopping) must be >= 1, got {config.max_nonfinite}"
        )
    if config.checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0 steps (0: the default points), got {config.checkpoint_every}")
    if config.keep_checkpoints < 1:
        raise ConfigError(f"keep_checkpoints must be >= 1 (resuming needs one), got {config.keep_checkpoints}")


def check_lr(lr: float) -> None:
    """The learning rate of both configurations must be > 0: at 0 no weight moves, yet the run would
    report accuracies and costs as if it had trained."""
    if lr <= 0:
        raise ConfigError(f"lr must be > 0, got {lr}" + (": at 0 no weight would move" if lr == 0 else ""))


def check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def check_types(config: Any) -> None:
    """Every field of the dataclass ``config`` has its annotated type, or a ``ConfigError`` says which not."""
    for f in fields(config):
        _check_type(f.name, getattr(config, f.name), f.type)


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
