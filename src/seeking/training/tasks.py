"""Data tasks: what a kind of data means to a trainer, chosen once from ``--data``.

A data task owns the data set of a run and says how its examples become training batches, what the
loss of a batch is, and how a model is tested. Two are registered (:data:`DATA_TASKS`):

- ``image``: image classification (the image data sets of :func:`~seeking.data.load_dataset`):
  batches augmented (random crops and mirrors, for ``seeking train``) and normalised, cross-entropy,
  test accuracy in percent and mean test loss;
- ``text``: character-level language modelling of a UTF-8 ``.txt`` file: random blocks of
  ``block_size`` characters, next-character cross-entropy, validation loss and perplexity.

The trainers (:mod:`.loop`, :mod:`.excite`) use only the methods below, never the kind itself.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageData, ImageDataset, augment, batches, data_source, load_dataset, normalize
from ..data.core import run_splits
from ..data.text import TextBatches, load_text, text_batches
from ..data.transforms import EpochBatches
from ..errors import ConfigError, SeekingWarning
from ..integrations.transformers import has_tokenizer, local_tokenizer
from ..models.gpt_moe import lm_loss
from ..models.registry import model_arguments, model_folder
from .evaluate import evaluate

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingBatches:
    """Endless training batches, ready for the model: the stream's next global batch, prepared
    (augmented, normalised) with the ``jitter`` generator. Stateful: the stream and the generator."""

    def __init__(
        self,
        stream: EpochBatches | TextBatches,
        prepare: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
        jitter: torch.Generator | None = None,
    ) -> None:
        self.stream, self.prepare, self.jitter = stream, prepare, jitter

    def __iter__(self) -> TrainingBatches:
        return self

    def __next__(self) -> Batch:
        x, y = next(self.stream)
        return self.prepare(x, self.jitter), y

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "jitter": self.jitter.get_state() if self.jitter else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        if self.jitter is not None:
            self.jitter.set_state(state["jitter"])


class ImageClassification:
    """Image classification on an :class:`~seeking.data.ImageDataset`.

    Args:
        dataset: the data set; its splits are cut to ``train_subset`` / ``test_subset`` with
            ``split_seed``, and ``holdout`` examples of the training split tested in place of the test
            split (:func:`~seeking.data.core.run_splits`).
        augmentation: random crops (``crop_padding`` pixels, default image size / 8) and mirrors of
            the training batches.
        channels_last: inputs in the channels-last memory format.
    """

    kind = "image"
    metric, metric_key = "test acc %", "accuracy"

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written with besides the configuration: nothing more for
        images (a data set's split is drawn from the configuration's seeds and subsets)."""
        return {}

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        batch_size: int,
        device: torch.device,
        train_subset: int | None = None,
        test_subset: int | None = None,
        split_seed: int = 0,
        holdout: int | None = None,
        augmentation: bool = False,
        crop_padding: int | None = None,
        channels_last: bool = False,
        progress: bool = False,
    ) -> None:
        train, test = run_splits(dataset, train_subset, test_subset, batch_size, split_seed, holdout)
        self.dataset, self.name, self.batch_size, self.device = dataset, dataset.name, batch_size, device
        self.train = ImageData(train.images.to(device), train.labels.to(device))
        self.test = test
        self.augmentation, self.channels_last, self.progress = augmentation, channels_last, progress
        self.padding = crop_padding if crop_padding is not None else max(dataset.image_size) // 8
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.describe = f"the images of {dataset.name}"

    @classmethod
    def from_config(
        cls,
        config: Any,
        device: torch.device,
        *,
        split_seed: int,
        augmentation: bool,
        progress: bool,
        dataset: ImageDataset | None,
    ) -> ImageClassification:
        dataset = dataset or load_dataset(config.data, cache_dir=config.cache_dir, progress=progress)
        return cls(
            dataset,
            batch_size=config.batch_size,
            device=device,
            train_subset=config.train_subset,
            test_subset=config.test_subset,
            split_seed=split_seed,
            holdout=config.holdout,
            augmentation=augmentation,
            crop_padding=getattr(config, "crop_padding", None),  # a field of seeking train's configuration
            channels_last=config.channels_last,
            progress=progress,
        )

    @staticmethod
    def preload(config: Any, progress: bool) -> ImageDataset:
        """The data set, loaded once for the arms of a comparison."""
        return load_dataset(config.data, cache_dir=config.cache_dir, progress=progress)

    @property
    def sizes(self) -> str:
        return f"{len(self.train)} train / {len(self.test)} test"

    def model_kwargs(self) -> dict[str, Any]:
        """The constructor arguments that come from the data."""
        d = self.dataset
        return {"num_classes": d.num_classes, "in_channels": d.in_channels, "image_size": list(d.image_size)}

    def prepare(self, images: torch.Tensor, jitter: torch.Generator | None = None) -> torch.Tensor:
        """Images as the model takes them: augmented with ``jitter`` (if augmentation is on), normalised."""
        if self.augmentation and jitter is not None:
            images = augment(images, padding=self.padding, hflip=self.dataset.hflip, generator=jitter)
        x = normalize(images, self.dataset.mean, self.dataset.std)
        return x.contiguous(memory_format=self.memory_format)

    def batches(self, seed: int) -> TrainingBatches:
        """The training batches of a run: every example once per epoch, in an order fixed by ``seed``."""
        stream = EpochBatches(self.train, self.batch_size, torch.Generator().manual_seed(seed))
        jitter = torch.Generator(device=self.device).manual_seed(seed) if self.augmentation else None
        return TrainingBatches(stream, self.prepare, jitter)

    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    def probe_batch(self) -> Batch:
        """The first ``batch_size`` training examples, prepared without augmentation: the batch on which
        models are probed and their FLOPs counted (every step has this shape)."""
        return self.prepare(self.train.images[: self.batch_size]), self.train.labels[: self.batch_size]

    def example(self) -> torch.Tensor:
        """Two prepared training images: the batch on which the Motivator checks that the motivated
        model starts as the base's function."""
        return self.prepare(self.train.images[:2])

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], torch.Tensor]:
        """``{"accuracy": percent, "loss": mean cross-entropy}`` on the test set, and the labels of the
        last test batch (whose routing an MoE model still holds)."""
        size = 500
        metrics = evaluate(
            model,
            self.test,
            self.dataset.mean,
            self.dataset.std,
            batch_size=size,
            channels_last=self.channels_last,
            progress=self.progress,
        )
        last = (len(self.test) - 1) // size * size
        return metrics, self.test.labels[last:].to(self.device)

    def calibration(self, count: int, seed: int) -> Iterator[torch.Tensor]:
        """``count`` training batches as training sees them (augmented), the same on every call with
        ``seed``, made one at a time: for re-estimating BatchNorm statistics."""
        order = torch.Generator().manual_seed(seed)
        jitter = torch.Generator(device=self.device).manual_seed(seed)
        chosen = itertools.islice(batches(self.train, self.batch_size, shuffle=True, generator=order), count)
        return (self.prepare(x, jitter) for x, _ in chosen)

    def file_metadata(self, data: str, test_subset: int | None) -> dict[str, Any]:
        """What a saved model file records for ``seeking evaluate``: normalisation, the data set and
        its classes, and the test subset its figures were measured on."""
        d = self.dataset
        return {
            "kind": self.kind,
            "mean": list(d.mean),
            "std": list(d.std),
            "dataset": d.name,
            "data": data_source(data),
            "classes": list(d.classes),
            "test_subset": test_subset,
        }


class TextModeling:
    """Language modelling of a UTF-8 text file (the last 10% for validation), one token per
    character or by a local Hugging Face tokenizer folder (``tokenizer``).

    An epoch (for ``seeking train``) is as many random blocks as make the training text's length in
    tokens (blocks are drawn at random offsets, so not every token once)."""

    kind = "text"
    metric, metric_key = "val loss", "loss"

    def identity(self) -> dict[str, Any]:
        """The text's digest (and its token ids' under a tokenizer): a run resumed on an edited file or
        with another tokenizer would train on other data."""
        tokens = {"tokenizer_token_ids_sha256": self.text.tokens_sha256} if self.text.tokens_sha256 else {}
        return {"data_file_sha256": self.text.sha256, **tokens}

    def __init__(
        self, path: str, *, batch_size: int, block_size: int, device: torch.device, tokenizer: str | None = None
    ) -> None:
        self.text = load_text(path, tokenizer=None if tokenizer is None else local_tokenizer(tokenizer))
        self.name, self.batch_size, self.block_size, self.device = self.text.name, batch_size, block_size, device
        self.train, self.val = self.text.train.to(device), self.text.val.to(device)
        unit = self.text.tokenizer.unit
        self.describe = f"the text of {self.name}"
        shortest = min(len(self.train), len(self.val))
        if shortest <= block_size:  # a block and its target, shifted by one, need block_size + 1
            fix = f"--block-size {shortest - 1} or less, or" if shortest > 1 else "a"
            raise ConfigError(
                f"{path} gives {len(self.train)} training and {len(self.val)} validation "
                f"{unit}s (the last 10%); a block of {block_size} and its target need "
                f"{block_size + 1} in each: use {fix} longer text"
            )
        blocks = len(self.train) - block_size  # distinct starting positions
        if batch_size > blocks:  # as for images: a batch no larger than the data it draws from
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {blocks} distinct blocks of {block_size} "
                f"{unit}s in the training text of {path}: lower --batch-size, or use longer text"
            )

    @classmethod
    def from_config(cls, config: Any, device: torch.device, **unused: Any) -> TextModeling:
        return cls(
            config.data,
            batch_size=config.batch_size,
            block_size=config.block_size,
            device=device,
            tokenizer=config.tokenizer,
        )

    @staticmethod
    def preload(config: Any, progress: bool) -> None:
        """Nothing: each arm of a comparison reads the text file itself (it is read whole, quickly)."""
        return None

    @property
    def sizes(self) -> str:
        return f"{len(self.train)} train / {len(self.val)} validation {self.text.tokenizer.unit}s"

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.text.vocab_size, "block_size": self.block_size}

    def batches(self, seed: int) -> TrainingBatches:
        """Endless batches of random blocks, fixed by ``seed``."""
        stream = TextBatches(self.train, self.block_size, self.batch_size, torch.Generator().manual_seed(seed))
        return TrainingBatches(stream, lambda x, jitter: x)

    def steps_per_epoch(self) -> int:
        """Training tokens // tokens per batch; ``ConfigError`` when one batch holds more tokens than the
        training text (an epoch would be less than one step: ``seeking train`` counts in epochs)."""
        per_batch, unit = self.batch_size * self.block_size, self.text.tokenizer.unit
        if per_batch > len(self.train):
            raise ConfigError(
                f"a batch of {self.batch_size} blocks of {self.block_size} {unit}s holds {per_batch} {unit}s, more "
                f"than the training text's {len(self.train)}: an epoch would be less than one step; lower "
                "--batch-size or --block-size, or use longer text"
            )
        return len(self.train) // per_batch

    def probe_batch(self) -> Batch:
        return next(TextBatches(self.train, self.block_size, self.batch_size, torch.Generator().manual_seed(0)))

    def example(self) -> torch.Tensor:
        """Two training blocks (2, block_size): the Motivator's probe of the start."""
        return self.probe_batch()[0][:2]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lm_loss(output, target)

    def calibration(self, count: int, seed: int) -> Iterator[torch.Tensor]:
        """``count`` training batches' inputs, the same on every call with ``seed`` (BatchNorm
        re-estimation, for a model that has any)."""
        stream = TextBatches(self.train, self.block_size, self.batch_size, torch.Generator().manual_seed(seed))
        return (x for x, _ in itertools.islice(stream, count))

    def file_metadata(self, data: str, test_subset: int | None) -> dict[str, Any]:
        """What a saved model file records: the text file, its tokenizer (a character vocabulary,
        token id = position, or the tokenizer folder) and the block size; ``seeking evaluate``
        refuses a language model by ``kind``."""
        return {
            "kind": self.kind,
            "dataset": self.name,
            "data": data_source(data),
            **self.text.tokenizer.metadata(),
            "block_size": self.block_size,
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], torch.Tensor]:
        """``{"loss": mean next-token loss (nats), "perplexity": exp(loss)}`` on 8 validation
        batches of 64 blocks (the same blocks every time), and the targets of the last batch."""
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(1234)  # the same validation blocks for every arm and step
        losses = []
        for x, y in itertools.islice(text_batches(self.val, self.block_size, 64, generator), 8):
            losses.append(lm_loss(model(x), y).item())
        model.train(was_training)
        loss = sum(losses) / len(losses)
        return {"loss": loss, "perplexity": math.exp(loss)}, y


DataTask = ImageClassification | TextModeling
# the data tasks by kind; a file with one of these suffixes is text, anything else an image data set
DATA_TASKS: dict[str, type] = {"image": ImageClassification, "text": TextModeling}
TEXT_SUFFIXES = (".txt",)


def data_kind(data: str) -> str:
    """The kind of data (a key of :data:`DATA_TASKS`) that ``--data`` names."""
    return "text" if Path(data).suffix.lower() in TEXT_SUFFIXES else "image"


def check_model_kind(model: str, kind: str, option: str = "--model") -> None:
    """Refuse a language model on images or an image model on text (told by whether its constructor
    takes ``vocab_size``)."""
    arguments = model_arguments(model)
    if arguments is not None and ("vocab_size" in arguments) != (kind == "text"):
        what = "a text file" if kind == "text" else "an image data set"
        raise ConfigError(
            f"model {model!r} does not train on {what}: language models (gpt_*, gpt_moe_*, hf_*, transformers "
            f"folders) train on a .txt file (only that suffix is read as text), the others on image data; check "
            f"{option} and --data"
        )


def check_tokenizer(config: Any, models: list[str]) -> None:
    """Warn when a model folder brings its own tokenizer but the text is encoded otherwise: its
    weights were trained on that tokenizer's ids, which character ids are not."""
    if data_kind(config.data) != "text" or config.tokenizer is not None:
        return
    for name in models:
        if model_folder(name) is not None and has_tokenizer(name):
            warnings.warn(
                f"model folder {name!r} has a tokenizer, but the text is encoded one token per character, which "
                f"its weights were not trained on: pass --tokenizer {name} to encode the text with it",
                SeekingWarning,
                stacklevel=2,
            )


def preload_data(config: Any, progress: bool = False) -> ImageDataset | None:
    """What the arms of a comparison share of ``config.data``, loaded once (an image data set; None for text)."""
    return DATA_TASKS[data_kind(config.data)].preload(config, progress)


def load_data_task(
    config: Any,
    device: torch.device,
    *,
    split_seed: int = 0,
    augmentation: bool = False,
    progress: bool = False,
    dataset: ImageDataset | None = None,
) -> DataTask:
    """The data task of a run's ``config`` (its ``data``, batch size, subsets, ...) on ``device``:
    ``split_seed`` draws the training subset; ``augmentation`` is for image training batches;
    ``dataset``, an image data set already loaded."""
    options = {"split_seed": split_seed, "augmentation": augmentation, "progress": progress, "dataset": dataset}
    return DATA_TASKS[data_kind(config.data)].from_config(config, device, **options)
