"""Text for language models: a UTF-8 file becomes token ids, and random blocks of them.

``load_text(path)`` reads the whole file (e.g. tiny Shakespeare) and encodes it with a
:class:`Tokenizer`: by default a :class:`CharTokenizer` over the file's distinct characters in
code-point order (token id = position); any other tokenizer (e.g. a local Hugging Face one, see
:func:`seeking.integrations.transformers.local_tokenizer`) is passed as ``tokenizer``. Ids are kept
as uint8 (int64 when there are more than 256 token ids), and split: the first
``round(n * (1 - val_fraction))`` tokens train, the rest validate. ``text_batches`` draws blocks at
uniformly random offsets; targets are the inputs shifted by one token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from seeking.errors import ConfigError, DataError


def _code_points(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))


def _encode(text: str, vocab: str, name: str) -> torch.Tensor:
    codes, known = _code_points(text), _code_points(vocab)
    ids = torch.searchsorted(known, codes).clamp_max(len(known) - 1)
    unknown = (known[ids] != codes).nonzero()
    if len(unknown):
        raise DataError(f"character {text[int(unknown[0])]!r} is not in the vocabulary of {name!r}")
    return ids


class Tokenizer(Protocol):
    """What :func:`load_text` needs of a tokenizer. ``unit``: what one token is, in messages
    ("character", "token"); ``metadata()``: what a saved model file records of it (JSON)."""

    unit: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> torch.Tensor: ...

    def decode(self, ids: torch.Tensor) -> str: ...

    def metadata(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CharTokenizer:
    """One token per character of ``vocab`` (token id = position in ``vocab``, sorted code points);
    ``name`` is named when a character is not in the vocabulary."""

    vocab: str
    name: str = "the text"
    unit = "character"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64) of ``text``; a character outside the vocabulary raises ``DataError``."""
        return _encode(text, self.vocab, self.name)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    def metadata(self) -> dict[str, Any]:
        return {"vocab": self.vocab}


@dataclass(frozen=True, eq=False)
class TextData:
    """``tokenizer``: what encoded the text; ``train`` and ``val``: 1-D token-id tensors; ``sha256``:
    the file's digest; ``tokens_sha256``: with a tokenizer other than characters, the token ids'
    (a resumed run checks that neither changed)."""

    name: str
    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor
    sha256: str = ""
    tokens_sha256: str = ""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def vocab(self) -> str:
        """The characters of a character-level vocabulary; ``AttributeError`` for another tokenizer."""
        return self.tokenizer.vocab

    def encode(self, text: str) -> torch.Tensor:
        return self.tokenizer.encode(text)

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids)


def load_text(path: str | os.PathLike, val_fraction: float = 0.1, tokenizer: Tokenizer | None = None) -> TextData:
    """The UTF-8 text file at ``path`` as a :class:`TextData`, encoded by ``tokenizer`` (default: its
    characters); ``DataError`` if missing, empty, not UTF-8, or fewer than 2 distinct tokens."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"no such text file: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read text file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: byte {e.start} cannot be decoded") from None
    if not text:
        raise DataError(f"text file {path} is empty")
    if tokenizer is None:
        tokenizer = CharTokenizer("".join(sorted(set(text))), path.stem)
    ids = tokenizer.encode(text)
    # a tokenizer's files are not the text's: the ids say what it made of them
    tokens = "" if isinstance(tokenizer, CharTokenizer) else hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    distinct = ids.unique()
    if len(distinct) < 2:  # as single-class image data: a loss of 0 from the first step, nothing learnt
        raise DataError(
            f"text file {path} has one distinct {tokenizer.unit} ({tokenizer.decode(distinct)!r}): there is nothing "
            "to predict"
        )
    ids = ids.to(torch.uint8 if tokenizer.vocab_size <= 256 else torch.int64)
    n_train = round(len(ids) * (1 - val_fraction))
    return TextData(path.stem, tokenizer, ids[:n_train], ids[n_train:], hashlib.sha256(raw).hexdigest(), tokens)


class TextBatches:
    """Endless (inputs, targets) int64 batches (batch_size, block_size) of random blocks of ``data``.

    The only state is the generator's, read between batches, so ``state_dict`` / ``load_state_dict``
    resume the exact sequence (with a ``generator``; without one, torch's global RNG is used)."""

    def __init__(
        self, data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
    ) -> None:
        if block_size < 1 or batch_size < 1:
            raise DataError(f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}")
        if len(data) <= block_size:
            raise DataError(f"a block of {block_size} tokens and its target need {block_size + 1}, got {len(data)}")
        self.data, self.block_size, self.batch_size, self.generator = data, block_size, batch_size, generator
        self.device = generator.device if generator is not None else torch.device("cpu")
        self.offsets = torch.arange(block_size + 1, device=self.device)

    def __iter__(self) -> TextBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.data) - self.block_size
        starts = torch.randint(0, high, (self.batch_size, 1), generator=self.generator, device=self.device)
        chunk = self.data[(starts + self.offsets).to(self.data.device)].long()
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.generator is None:
            raise DataError("TextBatches without a generator draws from torch's global RNG and has no state of its own")
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def text_batches(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> TextBatches:
    """Endless (inputs, targets) batches of random blocks of ``data``: see :class:`TextBatches`."""
    return TextBatches(data, block_size, batch_size, generator)
