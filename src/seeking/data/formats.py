"""Reading a Tree as CIFAR-10, CIFAR-100 (python versions) or a class-folder image tree.

Each reader returns a *payload*: a dict of plain values and uint8/int64 tensors that
``torch.load(weights_only=True)`` can read back from the cache.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from seeking.data.sources import Tree
from seeking.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
LAYOUTS = (
    "a CIFAR-10 python folder (batches.meta, data_batch_*, test_batch), a CIFAR-100 python "
    "folder (meta, train, test), or a class-folder tree train/<class>/*, test/<class>/* "
    "(possibly inside one top folder)"
)


def read_tree(tree: Tree, progress: bool) -> dict[str, Any]:
    """The payload of whichever supported layout ``tree`` holds."""
    for meta in tree.files:
        if meta.rpartition("/")[2] == "batches.meta":
            return _cifar10(tree, meta.removesuffix("batches.meta"))
    files = set(tree.files)
    for meta in tree.files:
        prefix = meta.removesuffix("meta")
        if meta.rpartition("/")[2] == "meta" and {f"{prefix}train", f"{prefix}test"} <= files:
            return _cifar100(tree, prefix)
    return _class_folders(tree, progress)


def payload(
    name: str, classes: list[str], hflip: bool, train: tuple[Any, Any], test: tuple[Any, Any]
) -> dict[str, Any]:
    """The one dict layout shared by every reader and by the cache."""
    return {
        "name": name,
        "classes": classes,
        "hflip": hflip,
        "train_images": torch.as_tensor(train[0], dtype=torch.uint8),
        "train_labels": torch.as_tensor(train[1], dtype=torch.int64),
        "test_images": torch.as_tensor(test[0], dtype=torch.uint8),
        "test_labels": torch.as_tensor(test[1], dtype=torch.int64),
    }


def _unpickle(tree: Tree, rel: str, keys: tuple[bytes, ...]) -> dict:
    # CIFAR ships as pickles; like any pickle they must come from a source you trust
    data = tree.read(rel)
    try:
        obj = pickle.loads(data, encoding="bytes")
    except Exception as e:  # unpickling garbage can fail in many ways; all mean a damaged file
        raise DataError(
            f"cannot unpickle {tree.where(rel)} ({type(e).__name__}: {e}): the file is damaged; "
            "get the CIFAR python version again"
        ) from e
    if not isinstance(obj, dict) or not all(k in obj for k in keys):
        raise DataError(
            f"{tree.where(rel)} is not a CIFAR batch: expected a pickled dict with keys {[k.decode() for k in keys]}"
        )
    return obj


def _cifar_split(tree: Tree, rels: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for rel in rels:
        batch = _unpickle(tree, rel, (b"data", label_key))
        data, batch_labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{tree.where(rel)}: data must be uint8 rows of 3072 values (R, G, B planes of "
                f"32x32), got {data.dtype} {data.shape}"
            )
        if batch_labels.shape != (len(data),):
            raise DataError(f"{tree.where(rel)}: {len(data)} images but labels shaped {batch_labels.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _names(tree: Tree, rel: str, key: bytes) -> list[str]:
    return [n.decode() for n in _unpickle(tree, rel, (key,))[key]]


def _cifar10(tree: Tree, prefix: str) -> dict[str, Any]:
    pattern = re.compile(re.escape(prefix) + r"data_batch_(\d+)")
    found = [(int(m[1]), rel) for rel in tree.files if (m := pattern.fullmatch(rel))]
    if not found or f"{prefix}test_batch" not in tree.files:
        raise DataError(
            f"{tree.where(prefix.rstrip('/'))} has batches.meta but no data_batch_* or no "
            "test_batch: a CIFAR-10 python folder holds data_batch_1..5, test_batch, batches.meta"
        )
    classes = _names(tree, f"{prefix}batches.meta", b"label_names")
    train = _cifar_split(tree, [rel for _, rel in sorted(found)], b"labels")
    test = _cifar_split(tree, [f"{prefix}test_batch"], b"labels")
    return payload("cifar10", classes, True, train, test)


def _cifar100(tree: Tree, prefix: str) -> dict[str, Any]:
    classes = _names(tree, f"{prefix}meta", b"fine_label_names")
    train = _cifar_split(tree, [f"{prefix}train"], b"fine_labels")
    test = _cifar_split(tree, [f"{prefix}test"], b"fine_labels")
    return payload("cifar100", classes, True, train, test)


def _tree_root(tree: Tree) -> str:
    """'' if train/ is at the top, else 'top/' for the one top folder that holds train/."""
    if "train" in tree.dirs:
        return ""
    tops = sorted(d.removesuffix("/train") for d in tree.dirs if re.fullmatch(r"[^/]+/train", d))
    if len(tops) == 1:
        return f"{tops[0]}/"
    if tops:
        raise DataError(f"{tree.source} holds several class-folder trees ({', '.join(tops)}): give one of them")
    raise DataError(f"no 'train' folder under {tree.source}: expected {LAYOUTS}")


def _class_folders(tree: Tree, progress: bool) -> dict[str, Any]:
    root = _tree_root(tree)
    if f"{root}test" not in tree.dirs:
        raise DataError(
            f"no 'test' folder next to {tree.where(root + 'train')}: a class-folder data set "
            "needs train/<class>/* and test/<class>/*"
        )
    split_classes = {split: [] for split in ("train", "test")}
    for d in sorted(tree.dirs):
        parent, _, name = d.rpartition("/")
        split = parent[len(root) :] if parent.startswith(root) else None
        if split in split_classes:
            split_classes[split].append(name)
    classes = split_classes["train"]
    if not classes:
        raise DataError(
            f"{tree.where(root + 'train')} has no class folders: put each class's images in "
            "train/<class>/ and test/<class>/"
        )
    if split_classes["test"] != classes:
        train, test = set(classes), set(split_classes["test"])
        raise DataError(
            f"the test classes of {tree.where(root.rstrip('/'))} differ from its train classes "
            f"(only in train: {sorted(train - test)}, only in test: {sorted(test - train)}): "
            "both splits need the same class folders"
        )
    # one pass over the sorted listing groups files by (split, class) in a deterministic order
    groups: dict[tuple[str, str], list[str]] = {}
    for rel in tree.files:
        parts = rel.removeprefix(root).split("/") if rel.startswith(root) else []
        if len(parts) == 3 and parts[0] in split_classes and rel.lower().endswith(IMAGE_SUFFIXES):
            groups.setdefault((parts[0], parts[1]), []).append(rel)
    rels, labels = [], []
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            found = groups.get((split, name))
            if not found:
                raise DataError(
                    f"class folder {tree.where(f'{root}{split}/{name}')} has no images "
                    f"({', '.join(IMAGE_SUFFIXES)}): add images or remove the folder"
                )
            rels += found
            labels += [label] * len(found)
    images = _decode(tree, rels, progress)
    n_train = sum(len(groups[("train", name)]) for name in classes)
    name = root.rstrip("/") or _stem(tree.source.name)
    train = (images[:n_train], labels[:n_train])
    return payload(name, classes, True, train, (images[n_train:], labels[n_train:]))


def _stem(name: str) -> str:
    return next((name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.endswith(s)), name)


def _open_image(tree: Tree, rel: str) -> Image.Image:
    data = tree.read(rel)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("L" if im.mode in ("L", "1") else "RGB")
    except UnidentifiedImageError as e:  # its message names the in-memory buffer, not the file
        raise DataError(
            f"cannot decode image {tree.where(rel)}: not an image format Pillow knows, or damaged; "
            "replace or remove the file"
        ) from e
    except Exception as e:  # Pillow reports bad files with many exception types
        raise DataError(
            f"cannot decode image {tree.where(rel)} ({type(e).__name__}: {e}): replace or remove the file"
        ) from e


def _decode(tree: Tree, rels: list[str], progress: bool) -> torch.Tensor:
    """uint8 (N, C, H, W): 1 channel if every image is grayscale, else RGB."""
    first = _open_image(tree, rels[0])
    out = np.empty((len(rels), first.height, first.width, 3), dtype=np.uint8)
    gray = True
    show = progress and sys.stderr.isatty()
    for i, rel in enumerate(tqdm(rels, desc="decoding images", unit="img", disable=not show)):
        im = first if i == 0 else _open_image(tree, rel)
        if im.size != first.size:
            raise DataError(
                f"{tree.where(rel)} is {im.width}x{im.height} but {tree.where(rels[0])} is "
                f"{first.width}x{first.height}: every image needs the same size; resize them first"
            )
        pixels = np.asarray(im)
        gray &= im.mode == "L"
        out[i] = pixels[:, :, None] if im.mode == "L" else pixels  # gray fills all three planes
    if gray:
        out = out[..., :1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
