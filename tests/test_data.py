"""Tests of seeking.data on tiny fixtures made in tmp_path for every supported format."""

from __future__ import annotations

import collections
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import seeking.data.formats as formats
import seeking.data.load as load
from seeking.data import (
    DEFAULT_DATASET,
    ImageData,
    ImageDataset,
    augment,
    batches,
    load_dataset,
    normalize,
)
from seeking.data.core import stratified_indices
from seeking.errors import DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    # no test may touch ~/.cache; tests that care pass cache_dir explicitly
    monkeypatch.setenv("SEEKING_CACHE_DIR", str(tmp_path / "env-cache"))


# ---------------------------------------------------------------- fixture builders


def make_tar(tar_path: Path, *entries: tuple[Path, str]) -> Path:
    with tarfile.open(tar_path, "w:gz") as tar:
        for src, arcname in entries:
            tar.add(src, arcname=arcname)
    return tar_path


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(parent: Path, rows: int = 3) -> tuple[Path, dict]:
    """cifar-10-batches-py with two data batches; returns the folder and the expected tensors."""
    rng = np.random.default_rng(0)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches_ = {}
    for name in ("data_batch_2", "data_batch_1", "test_batch"):  # order must not matter
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, rows).tolist()
        write_pickle(folder / name, {b"data": data, b"labels": labels, b"batch_label": b"x"})
        batches_[name] = (data, labels)
    names = [f"class{k}".encode() for k in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    (folder / "readme.html").write_text("not a batch")
    train = [batches_["data_batch_1"], batches_["data_batch_2"]]
    expected = {
        "train_images": np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32),
        "train_labels": [label for _, labels in train for label in labels],
        "test_images": batches_["test_batch"][0].reshape(-1, 3, 32, 32),
        "test_labels": batches_["test_batch"][1],
        "classes": tuple(f"class{k}" for k in range(10)),
    }
    return folder, expected


def make_cifar100(parent: Path, rows: int = 4) -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {"classes": tuple(f"fine{k}" for k in range(100))}
    for split in ("train", "test"):
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, rows).tolist()
        coarse = [0] * rows
        write_pickle(folder / split, {b"data": data, b"fine_labels": labels, b"coarse_labels": coarse})
        expected[f"{split}_images"] = data.reshape(-1, 3, 32, 32)
        expected[f"{split}_labels"] = labels
    names = [n.encode() for n in expected["classes"]]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"]})
    return folder, expected


def pattern(seed: int, size=(5, 4), channels: int = 3) -> np.ndarray:
    """A known pixel pattern, (H, W, C) or (H, W) for one channel."""
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def make_tree(root: Path, classes=("cat", "dog"), per_class=(3, 2), jpeg_class=None) -> dict:
    """root/{train,test}/<class>/ of 5x4 PNG images (JPEG for ``jpeg_class``); returns the PNGs."""
    expected = {}
    seed = 0
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                pixels = pattern(seed)
                if cls == jpeg_class:
                    Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
                else:
                    Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                    expected[(split, cls, i)] = (pixels, label)
    (root / "train" / classes[0] / "notes.txt").write_text("ignored: not an image")
    (root / "train" / classes[0] / ".DS_Store").write_bytes(b"\0junk")
    return expected


def check_tree(ds: ImageDataset, expected: dict, classes=("cat", "dog"), per_class=(3, 2)):
    assert ds.classes == classes and ds.hflip is True
    assert ds.train.images.shape == (len(classes) * per_class[0], 3, 4, 5)
    assert ds.test.images.shape == (len(classes) * per_class[1], 3, 4, 5)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    for (split, _, i), (pixels, label) in expected.items():
        data = ds.train if split == "train" else ds.test
        k = label * per_class[split == "test"] + i  # sorted by class, then by file name
        assert data.labels[k] == label
        assert torch.equal(data.images[k], torch.from_numpy(pixels).permute(2, 0, 1))


def check_cifar(ds: ImageDataset, expected: dict, name: str) -> None:
    assert ds.name == name and ds.hflip is True and ds.classes == expected["classes"]
    for split in ("train", "test"):
        data = getattr(ds, split)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert torch.equal(data.images, torch.from_numpy(expected[f"{split}_images"]))
        assert data.labels.tolist() == expected[f"{split}_labels"]
    assert ds.in_channels == 3 and ds.image_size == (32, 32)


# ---------------------------------------------------------------- digits


def test_digits_default():
    assert DEFAULT_DATASET == "digits"
    ds = load_dataset("digits")
    assert (ds.name, ds.hflip, ds.num_classes) == ("digits", False, 10)
    assert ds.classes == tuple(str(k) for k in range(10))
    assert ds.train.images.shape == (1437, 1, 8, 8) and ds.test.images.shape == (360, 1, 8, 8)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.test.labels.bincount().tolist() == [36] * 10
    from sklearn.datasets import load_digits

    raw = load_digits()
    want = np.rint(raw.images * 255 / 16).astype(np.uint8)
    got = torch.cat([ds.train.images, ds.test.images])[:, 0].numpy()
    assert collections.Counter(x.tobytes() for x in got) == collections.Counter(x.tobytes() for x in want)
    again = load_dataset("digits")
    assert torch.equal(again.test.images, ds.test.images)
    x = ds.train.images.double() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert ds.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("form", ["folder", "parent", "tar"])
def test_cifar10(tmp_path, form):
    folder, expected = make_cifar10(tmp_path / "src")
    spec = {
        "folder": folder,
        "parent": folder.parent,
        "tar": make_tar(tmp_path / "cifar-10-python.tar.gz", (folder, folder.name)),
    }[form]
    check_cifar(load_dataset(spec, cache_dir=tmp_path / "cache"), expected, "cifar10")


@pytest.mark.parametrize("form", ["folder", "parent", "tar"])
def test_cifar100(tmp_path, form):
    folder, expected = make_cifar100(tmp_path / "src")
    spec = {
        "folder": folder,
        "parent": folder.parent,
        "tar": make_tar(tmp_path / "cifar-100-python.tar.gz", (folder, folder.name)),
    }[form]
    ds = load_dataset(str(spec), cache_dir=tmp_path / "cache")
    check_cifar(ds, expected, "cifar100")
    assert ds.num_classes == 100


# ---------------------------------------------------------------- class-folder trees


def test_tree_folder(tmp_path):
    expected = make_tree(tmp_path / "pets")
    ds = load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")
    assert ds.name == "pets"
    check_tree(ds, expected)


def test_tree_with_top_folder_and_jpeg(tmp_path):
    expected = make_tree(tmp_path / "outer" / "pets-jpeg", jpeg_class="dog")
    (tmp_path / "outer" / "README").write_text("a file beside the top folder")
    ds = load_dataset(tmp_path / "outer", cache_dir=tmp_path / "cache")
    assert ds.name == "pets-jpeg"
    check_tree(ds, expected)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("top", [True, False])
def test_tree_tar(tmp_path, top):
    expected = make_tree(tmp_path / "pets", jpeg_class="dog")
    if top:  # like cifar10-jpeg.tar.gz: one top folder inside the archive
        tar = make_tar(tmp_path / "pets.tar.gz", (tmp_path / "pets", "pets"))
    else:  # members named ./train/..., ./test/...
        entries = [(tmp_path / "pets" / s, f"./{s}") for s in ("train", "test")]
        tar = make_tar(tmp_path / "animals.tgz", *entries)
    ds = load_dataset(tar, cache_dir=tmp_path / "cache")
    assert ds.name == ("pets" if top else "animals")
    check_tree(ds, expected)


def test_tree_grayscale_and_mixed(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "gray" / split / "a").mkdir(parents=True)
        Image.fromarray(pattern(7, channels=1), "L").save(tmp_path / "gray" / split / "a" / "x.png")
    ds = load_dataset(tmp_path / "gray", cache_dir=tmp_path / "cache")
    assert ds.in_channels == 1 and len(ds.mean) == 1
    assert torch.equal(ds.train.images[0, 0], torch.from_numpy(pattern(7, channels=1)))
    Image.fromarray(pattern(8)).save(tmp_path / "gray" / "test" / "a" / "y.png")  # one RGB image
    ds = load_dataset(tmp_path / "gray", cache_dir=tmp_path / "cache")
    assert ds.in_channels == 3  # gray images are repeated over the three planes
    assert torch.equal(ds.train.images[0], torch.from_numpy(pattern(7, channels=1)).expand(3, 4, 5))


# ---------------------------------------------------------------- cache


def _no_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(formats, "_decode", boom)
    monkeypatch.setattr(load, "archive_tree", boom)


def test_cache_reused_and_invalidated_folder(tmp_path, monkeypatch):
    make_tree(tmp_path / "pets")
    cache = tmp_path / "cache"
    first = load_dataset(tmp_path / "pets", cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    with monkeypatch.context() as m:
        _no_decoding(m)
        second = load_dataset(tmp_path / "pets", cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images) and first.mean == second.mean
    # a changed image is decoded again
    changed = tmp_path / "pets" / "train" / "cat" / "0000.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 10**18))
    third = load_dataset(tmp_path / "pets", cache_dir=cache)
    assert third.train.images[0].sum() == 0 and first.train.images[0].sum() > 0


def test_cache_reused_and_invalidated_tar(tmp_path, monkeypatch):
    folder, expected = make_cifar10(tmp_path / "src")
    tar = make_tar(tmp_path / "c.tar.gz", (folder, folder.name))
    load_dataset(tar, cache_dir=tmp_path / "cache")
    with monkeypatch.context() as m:
        _no_decoding(m)
        check_cifar(load_dataset(tar, cache_dir=tmp_path / "cache"), expected, "cifar10")
    folder2, expected2 = make_cifar10(tmp_path / "src2", rows=5)
    make_tar(tar, (folder2, folder2.name))
    os.utime(tar, ns=(1, 10**18))
    check_cifar(load_dataset(tar, cache_dir=tmp_path / "cache"), expected2, "cifar10")


def test_cache_env_and_corrupt_file(tmp_path):
    expected = make_tree(tmp_path / "pets")
    load_dataset(tmp_path / "pets")  # SEEKING_CACHE_DIR, set by the autouse fixture
    (cached,) = (tmp_path / "env-cache").glob("*.pt")
    cached.write_bytes(b"not a torch file")
    check_tree(load_dataset(tmp_path / "pets"), expected)
    assert cached.stat().st_size > 100  # rewritten


# ---------------------------------------------------------------- augment


def test_augment_identity_shape_dtype():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment(x, padding=0, hflip=False), x)
    for images in (x, x.float() / 255):
        out = augment(images, padding=2, hflip=True, generator=torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == images.dtype


def test_augment_crops_are_windows_of_padded_images():
    n, p = 64, 3
    x = torch.rand(n, 2, 7, 9)
    out = augment(x, padding=p, hflip=True, generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (p, p, p, p))
    offsets, flips = set(), 0

    def window(i: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
        crop = padded[i, :, dy : dy + 7, dx : dx + 9]
        return crop.flip(2) if flip else crop

    keys = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (0, 1)]
    for i in range(n):  # per-image reference: find the window (and mirror) each output is
        matches = [key for key in keys if torch.equal(out[i], window(i, *key))]
        assert len(matches) == 1, f"image {i} is not one window of its padded image"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 10 and 0 < flips < n
    again = augment(x, padding=p, hflip=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_augment_flip_probability_and_exact_mirror():
    n = 2000
    x = torch.randint(0, 256, (n, 1, 3, 4), dtype=torch.uint8)
    x[:, :, :, 0] = 0  # make every image different from its mirror
    x[:, :, :, -1] = 255
    out = augment(x, padding=0, hflip=True, generator=torch.Generator().manual_seed(2))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert torch.all(same ^ mirrored)
    assert 900 < int(mirrored.sum()) < 1100  # 1000 +- 4.5 sigma


# ---------------------------------------------------------------- batches, subset, normalize


def test_batches_cover_every_index_once():
    # example i has label i and every pixel equal to i, so a batch shows which examples it holds
    n = 23
    data = ImageData(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2), torch.arange(n))
    g = torch.Generator().manual_seed(0)
    seen = list(batches(data, 5, shuffle=True, generator=g))
    assert [len(lab) for _, lab in seen] == [5, 5, 5, 5, 3]
    assert all(torch.equal(images[:, 0, 0, 0].long(), lab) for images, lab in seen)
    order = torch.cat([lab for _, lab in seen]).tolist()
    assert sorted(order) == list(range(n)) and order != list(range(n))
    dropped = list(batches(data, 5, shuffle=True, generator=g, drop_last=True))
    assert [len(lab) for _, lab in dropped] == [5] * 4
    assert len(set(torch.cat([lab for _, lab in dropped]).tolist())) == 20
    plain = torch.cat([lab for _, lab in batches(data, 10, shuffle=False)])
    assert plain.tolist() == list(range(n))
    with pytest.raises(DataError, match="batch_size"):
        next(batches(data, 0, shuffle=False))


def test_subset_stratified_and_deterministic():
    labels = torch.tensor([0] * 2 + [1] * 10 + [2] * 10)
    data = ImageData(torch.arange(22, dtype=torch.uint8).view(22, 1, 1, 1), labels)
    sub = data.subset(12, seed=3)
    assert sub.labels.bincount().tolist() == [2, 5, 5]
    assert torch.equal(sub.labels, labels[sub.images.view(-1).long()])  # pairs stay together
    assert torch.equal(sub.images, data.subset(12, seed=3).images)
    assert not torch.equal(sub.images, data.subset(12, seed=4).images)
    assert data.subset(22) is data and data.subset(100) is data
    with pytest.raises(DataError, match="at least 1"):
        data.subset(0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.data())
def test_subset_quotas_are_as_equal_as_possible(counts, draw):
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    n = draw.draw(st.integers(1, len(labels)))
    index = stratified_indices(labels, n, seed=0)
    got = labels[index].bincount(minlength=len(counts)).tolist()
    assert sum(got) == n and len(set(index.tolist())) == n
    # a class below its size never has fewer than any other class minus one
    not_full = [g for g, c in zip(got, counts, strict=True) if g < c]
    assert all(g >= max(got) - 1 for g in not_full)


def test_normalize_matches_manual():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    want = (x.double() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    got = normalize(x, mean, std)
    assert got.dtype == torch.float32 and got.device == x.device
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(normalize(x.float() / 255, mean, std), got)
    with pytest.raises(DataError, match="3 means"):
        normalize(x[:, :1], mean, std)


def test_dataset_stats_and_properties(tmp_path):
    make_tree(tmp_path / "pets")
    ds = load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")
    x = ds.train.images.double() / 255
    assert ds.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert ds.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (2, 3, (4, 5))


def test_image_data_validates():
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="int64"):
        ImageData(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    data = ImageData(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 2]))
    with pytest.raises(DataError, match=r"train labels must lie in 0\.\.1"):
        ImageDataset("x", data, data, ("a", "b"), (0.0,), (1.0,), hflip=False)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        augment(torch.zeros(2, 2, 2), padding=1, hflip=False)


# ---------------------------------------------------------------- errors


def test_error_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match=f"no such file or folder: {tmp_path / 'nope'}"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"unknown data set 'cifar10'.*'digits'.*by path"):
        load_dataset("cifar10")


def test_error_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no 'train' folder under .*empty: expected .*CIFAR-10"):
        load_dataset(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_error_empty_class_folder(tmp_path):
    make_tree(tmp_path / "pets")
    for f in (tmp_path / "pets" / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*test/dog has no images"):
        load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")


def test_error_mismatched_sizes(tmp_path):
    make_tree(tmp_path / "pets")
    Image.fromarray(pattern(0, size=(6, 4))).save(tmp_path / "pets" / "test" / "cat" / "0000.png")
    with pytest.raises(DataError, match=r"test/cat/0000.png is 6x4 but .*train/cat/0000.png is 5x4"):
        load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")


def test_error_corrupt_image(tmp_path):
    make_tree(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "dog" / "0001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*train/dog/0001.png"):
        load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")


def test_error_test_classes_differ(tmp_path):
    make_tree(tmp_path / "pets")
    (tmp_path / "pets" / "test" / "dog").rename(tmp_path / "pets" / "test" / "cow")
    with pytest.raises(DataError, match=r"only in train: \['dog'\], only in test: \['cow'\]"):
        load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")


def test_error_no_test_folder(tmp_path):
    make_tree(tmp_path / "pets")
    (tmp_path / "pets" / "test").rename(tmp_path / "pets" / "valid")
    with pytest.raises(DataError, match="no 'test' folder"):
        load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache")


def test_error_corrupt_pickle(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(DataError, match=r"cannot unpickle .*data_batch_2.*damaged"):
        load_dataset(folder, cache_dir=tmp_path / "cache")
    write_pickle(folder / "data_batch_2", {b"labels": [1]})
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR batch"):
        load_dataset(folder, cache_dir=tmp_path / "cache")


def test_error_cifar_without_test_batch(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="no data_batch_\\* or no test_batch"):
        load_dataset(folder, cache_dir=tmp_path / "cache")


def test_error_corrupt_or_foreign_archive(tmp_path):
    folder, _ = make_cifar10(tmp_path / "src")
    tar = make_tar(tmp_path / "c.tar.gz", (folder, folder.name))
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated download
    with pytest.raises(DataError, match=r"cannot read .*c.tar.gz as a tar archive"):
        load_dataset(tar, cache_dir=tmp_path / "cache")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt is neither a folder nor a tar archive"):
        load_dataset(text, cache_dir=tmp_path / "cache")  # not a damaged archive: no archive at all
