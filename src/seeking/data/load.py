"""``load_dataset``: a name or a path in, an in-memory ``ImageDataset`` out; paths are cached."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seeking.data.core import ImageData, ImageDataset, channel_stats, stratified_indices
from seeking.data.formats import ARCHIVE_SUFFIXES, LAYOUTS, payload, read_tree
from seeking.data.sources import archive_tree, folder_tree
from seeking.errors import DataError
from seeking.io import atomic_write_bytes

DEFAULT_DATASET = "digits"
CACHE_VERSION = 1  # bump when the payload layout or decoding changes, so old caches are not used
DIGITS_TEST_SIZE = 360  # 36 per class; leaves 1437 for training


def load_dataset(
    spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> ImageDataset:
    """The data set named by ``spec``: ``"digits"`` or a path (see the package docstring).

    A known name wins over a same-named path; write ``./digits`` for such a folder.
    """
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()
    path = Path(spec).expanduser()
    if not path.exists():
        if isinstance(spec, str) and not re.search(r"[/\\.]", spec):
            raise DataError(
                f"unknown data set {spec!r}: the known names are {', '.join(map(repr, _NAMED))}; "
                "CIFAR-10/100 (python version) and class-folder data sets are given by path, "
                "e.g. /data/cifar-10-batches-py or /data/cifar10-jpeg.tar.gz"
            )
        raise DataError(f"no such file or folder: {path}: expected {LAYOUTS}, or a .tar.gz of one")
    path = path.resolve()
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES) and not _is_tar(path):
        text = " A .txt file trains a character-level language model: seeking excite --model gpt_moe_tiny --data FILE."
        raise DataError(
            f"{path} is neither a folder nor a tar archive: expected {LAYOUTS}, or a .tar.gz of one."
            + (text if path.suffix.lower() == ".txt" else "")
        )
    if path.is_dir():
        tree, stamp = folder_tree(path)
    else:  # an archive is only opened when the cache misses
        tree, st = None, path.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    key = hashlib.sha256(f"{CACHE_VERSION}\0{path}\0{stamp}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^\w.-]", "_", path.name)
    cache = _cache_root(cache_dir) / f"{slug}-{key}.pt"
    dataset = _read_cache(cache)
    if dataset is None:
        data = read_tree(tree if tree is not None else archive_tree(path), progress)
        dataset = _dataset(data)
        _write_cache(cache, data)
    return dataset


def data_source(spec: str | os.PathLike) -> str:
    """``spec`` as a run records it, to load the same data later from any working folder: a data set
    name as it is, a path made absolute."""
    return spec if isinstance(spec, str) and spec in _NAMED else os.path.abspath(Path(spec).expanduser())


def _is_tar(path: Path) -> bool:
    """Whether ``path`` starts like a tar archive (any compression); reads its first block only."""
    try:
        return tarfile.is_tarfile(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from e


def _digits() -> ImageDataset:
    from sklearn.datasets import load_digits  # slow to import; only this data set needs it

    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[stratified_indices(labels, DIGITS_TEST_SIZE, seed=0)] = True
    train = (images[~is_test], labels[~is_test])
    test = (images[is_test], labels[is_test])
    return _dataset(payload("digits", [str(k) for k in range(10)], False, train, test))


_NAMED = {"digits": _digits}


def _dataset(data: dict[str, Any]) -> ImageDataset:
    train = ImageData(data["train_images"], data["train_labels"])
    mean, std = channel_stats(train.images)
    return ImageDataset(
        name=data["name"],
        train=train,
        test=ImageData(data["test_images"], data["test_labels"]),
        classes=tuple(data["classes"]),
        mean=mean,
        std=std,
        hflip=bool(data["hflip"]),
    )


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = cache_dir or os.environ.get("SEEKING_CACHE_DIR") or Path.home() / ".cache" / "seeking"
    return Path(root).expanduser()


def _read_cache(file: Path) -> ImageDataset | None:
    if not file.is_file():
        return None
    try:
        return _dataset(torch.load(file, map_location="cpu", weights_only=True))
    except Exception:  # a damaged or foreign cache file only costs a new decode; it is rewritten
        return None


def _write_cache(file: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers see the old file or the whole new one, never a partial file."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    try:
        atomic_write_bytes(file, buffer.getbuffer())
    except OSError as e:  # a read-only or full disk should not stop training: warn and go on
        warnings.warn(
            f"could not write the data cache {file} ({e}); set SEEKING_CACHE_DIR or cache_dir to "
            "a writable folder to avoid decoding again next time",
            stacklevel=3,
        )
