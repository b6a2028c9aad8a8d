"""Image classification data held in memory as uint8 tensors, with batching and augmentation.

``load_dataset(spec)`` reads:

- ``"digits"`` (the default): scikit-learn's 8x8 handwritten digits, scaled from 0..16 to 0..255,
  split 1437/360 with 36 test images per class (seed 0). Mirror images change a digit, so
  ``hflip`` is False.
- CIFAR-10 or CIFAR-100, python version: the ``cifar-10-batches-py`` / ``cifar-100-python``
  folder, a folder holding it, or its ``.tar.gz``. Every ``data_batch_*`` present is read (at
  least one, plus ``test_batch``). CIFAR-100 uses the 100 fine labels.
- A class-folder tree ``train/<class>/*`` and ``test/<class>/*`` (possibly inside one top folder),
  as a folder or a ``.tar.gz``. Classes are train's sorted folder names; test must have the same.
  Image files are those with a known suffix (``formats.IMAGE_SUFFIXES``); other files and hidden
  names are ignored. Images are RGB unless every image of both splits is grayscale (mode L or 1),
  then they have one channel. All images need the same size. The name is the top folder's name,
  else the folder's or archive's name without ``.tar.gz``.

Archives are read in one sequential pass without extracting. Everything read from a path is
cached as one ``torch.save`` file under ``cache_dir``, ``$SEEKING_CACHE_DIR`` or
``~/.cache/seeking``, keyed by the resolved path and the size and mtime of the archive or of
every file in the folder, so a changed source is read again. Bad input raises ``DataError``.

Character-level text for language models: ``load_text(path)`` and ``text_batches`` (see
:mod:`seeking.data.text`).
"""

from seeking.data.core import ImageData, ImageDataset
from seeking.data.load import DEFAULT_DATASET, data_source, load_dataset
from seeking.data.text import TextData, load_text, text_batches
from seeking.data.transforms import augment, batches, normalize

__all__ = [
    "DEFAULT_DATASET",
    "ImageData",
    "ImageDataset",
    "TextData",
    "augment",
    "batches",
    "data_source",
    "load_dataset",
    "load_text",
    "normalize",
    "text_batches",
]
