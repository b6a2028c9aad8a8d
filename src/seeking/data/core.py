"""In-memory image data sets: one split is two tensors, a data set is two splits plus metadata."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import torch

from seeking.errors import ConfigError, DataError, SeekingWarning


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field has no single truth
class ImageData:
    """One split held in memory: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a uint8 tensor shaped (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}: convert with .to(torch.uint8) and add missing axes"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"labels must be an int64 tensor shaped ({self.images.shape[0]},) to match the "
                f"images, got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, n: int, seed: int = 0) -> ImageData:
        """``n`` examples, as equally many per class as the class sizes allow; fixed by ``seed``."""
        if n < 1:
            raise DataError(f"a subset needs at least 1 example, got n={n}: pass a positive n")
        if n >= len(self):
            return self
        index = stratified_indices(self.labels, n, seed)
        return ImageData(self.images[index], self.labels[index])


def chosen_subset(data: ImageData, n: int | None, seed: int, option: str) -> ImageData:
    """``data.subset(n, seed)``, or all of ``data`` when ``n`` is None. Asking for more examples than
    there are gives all of them and a ``SeekingWarning`` naming ``option`` (the run is not the size asked)."""
    if n is None:
        return data
    if n > len(data):
        warnings.warn(
            f"{option} {n} is more than the {len(data)} examples there are: using all {len(data)}",
            SeekingWarning,
            stacklevel=2,
        )
    return data.subset(n, seed)


def require_classes(data: ImageData, what: str) -> None:
    """Raise ``DataError`` unless the labels of ``data`` (``what``: which split, for the message) hold
    at least two classes: from one class a classifier learns nothing, yet its accuracy would read 100%."""
    classes = data.labels.unique()
    if len(classes) < 2:
        found = f"only label {int(classes[0])}" if len(classes) else "no examples"
        raise DataError(
            f"the {what} hold {found}: a classifier needs at least two classes to learn anything; "
            "check the data set (or raise the subset size)"
        )


def holdout_split(data: ImageData, n: int) -> tuple[ImageData, ImageData]:
    """``data`` less ``n`` held-out examples (class-stratified, always the same ones: seed 0), and those
    ``n``: a validation split of a training set. Raises ``ConfigError`` unless 1 <= n < len(data)."""
    if not 1 <= n < len(data):
        raise ConfigError(f"holdout {n} must leave training images: the training set has {len(data)}; lower --holdout")
    held = stratified_indices(data.labels, n, 0)
    kept = torch.ones(len(data), dtype=torch.bool)
    kept[held] = False
    return ImageData(data.images[kept], data.labels[kept]), ImageData(data.images[held], data.labels[held])


def run_splits(
    dataset: ImageDataset,
    train_subset: int | None,
    test_subset: int | None,
    batch_size: int,
    seed: int,
    holdout: int | None = None,
) -> tuple[ImageData, ImageData]:
    """The training and test examples of a run: ``dataset``'s splits cut to ``train_subset`` (drawn
    with ``seed``) and ``test_subset`` (seed 0, so every run tests on the same examples), or whole when
    None. With ``holdout``, the run is tested on that many examples held out of the training split
    (:func:`holdout_split`, the same for every seed) in place of the test split, and trains on the rest:
    a validation run for choosing settings, which never sees the test split. Raises ``DataError`` for
    training data of one class and ``ConfigError`` when the training examples cannot fill one batch of
    ``batch_size`` or there is nothing to test on."""
    train, test = dataset.train, dataset.test
    if holdout is not None:
        train, test = holdout_split(train, holdout)
    train = chosen_subset(train, train_subset, seed, "train_subset")
    test = chosen_subset(test, test_subset, 0, "test_subset")
    require_classes(train, "training data")
    if len(train) < batch_size:
        raise ConfigError(
            f"batch_size {batch_size} exceeds the {len(train)} training images: lower --batch-size"
            + (" or raise --train-subset" if train_subset else "")
        )
    if not len(test):
        raise ConfigError(f"data set {dataset.name!r} has no test images: the run could not be tested")
    return train, test


@dataclass(frozen=True)
class ImageDataset:
    """A train and a test split with class names and the train split's channel statistics."""

    name: str
    train: ImageData
    test: ImageData
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, pixels in [0, 1]
    std: tuple[float, ...]
    hflip: bool  # whether a mirror image keeps its label (False for digits)

    def __post_init__(self) -> None:
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"data set {self.name!r}: train images are {tuple(self.train.images.shape[1:])} "
                f"but test images are {tuple(self.test.images.shape[1:])}; both splits need one "
                "shape (C, H, W)"
            )
        for split, data in (("train", self.train), ("test", self.test)):
            if len(data) and (data.labels.min() < 0 or data.labels.max() >= len(self.classes)):
                raise DataError(
                    f"data set {self.name!r}: {split} labels must lie in "
                    f"0..{len(self.classes) - 1} for {len(self.classes)} classes"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.train.images.shape[2], self.train.images.shape[3])


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` examples, as equally many per class as the class sizes allow."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    # a stable sort of the shuffled labels groups indices by class in random order within a class
    by_class = perm[torch.argsort(labels[perm], stable=True)]
    counts = torch.unique(labels, return_counts=True)[1].tolist()
    quotas = [0] * len(counts)
    remaining = n
    # fill the smallest classes first so that what they cannot take goes to the larger ones
    smallest_first = sorted(range(len(counts)), key=lambda k: counts[k])
    for done, k in enumerate(smallest_first):
        quotas[k] = min(counts[k], remaining // (len(counts) - done))
        remaining -= quotas[k]
    starts = [0, *itertools.accumulate(counts[:-1])]
    picked = torch.cat([by_class[s : s + q] for s, q in zip(starts, quotas, strict=True)])
    return picked.sort().values


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images in [0, 1] units, from 256-bin histograms.

    Histograms avoid a float copy of the whole split. A constant channel gets std 1 so that
    normalising it stays finite.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * levels).sum() / total
        var = (counts * (levels - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt()) if var > 0 else 1.0)
    return tuple(means), tuple(stds)
