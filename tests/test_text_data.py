"""Tests of seeking.data.text on text files made in tmp_path."""

from __future__ import annotations

import itertools

import pytest
import torch

from seeking.data import load_text, text_batches
from seeking.errors import ConfigError, DataError
from seeking.training.tasks import data_kind

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — ünd so.\n" * 8


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_vocab_round_trip_and_split(text_file):
    data = load_text(text_file)
    assert data.name == "play"
    assert data.vocab == "".join(sorted(set(TEXT))) and data.vocab_size == len(set(TEXT))
    assert data.train.dtype == torch.uint8
    assert (len(data.train), len(data.val)) == (round(len(TEXT) * 0.9), len(TEXT) - round(len(TEXT) * 0.9))
    assert data.decode(torch.cat([data.train, data.val])) == TEXT
    ids = data.encode("the question")
    assert ids.dtype == torch.int64 and data.decode(ids) == "the question"
    assert data.encode("—").item() == data.vocab.index("—")
    with pytest.raises(DataError, match="'Z' is not in the vocabulary"):
        data.encode("Zebra")
    whole = load_text(text_file, val_fraction=0)
    assert len(whole.train) == len(TEXT) and len(whole.val) == 0


def test_large_vocab_is_int64(tmp_path):
    text = "".join(chr(0x3000 + i) for i in range(300)) * 2
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    data = load_text(tmp_path / "wide.txt")
    assert data.vocab_size == 300 and data.train.dtype == torch.int64
    assert data.decode(torch.cat([data.train, data.val])) == text


def test_batches_are_blocks_with_shifted_targets(text_file):
    data = load_text(text_file).train
    gen = torch.Generator().manual_seed(0)
    for x, y in itertools.islice(text_batches(data, block_size=16, batch_size=5, generator=gen), 3):
        assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y, strict=True):
            block = torch.cat([row_x, row_y[-1:]])
            starts = [s for s in range(len(data) - 16) if torch.equal(data[s : s + 17].long(), block)]
            assert starts  # every row is a contiguous block of the data
    again = next(text_batches(data, 16, 5, torch.Generator().manual_seed(0)))
    first = next(text_batches(data, 16, 5, torch.Generator().manual_seed(0)))
    assert torch.equal(again[0], first[0])
    short = torch.arange(4, dtype=torch.uint8)
    x, y = next(text_batches(short, block_size=3, batch_size=2))
    assert torch.equal(x, short[:3].long().expand(2, 3)) and torch.equal(y, short[1:].long().expand(2, 3))


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no such text file"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text: byte 3"):
        load_text(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="cannot read"):
        load_text(tmp_path)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_text(tmp_path / "empty.txt", val_fraction=1)
    with pytest.raises(DataError, match="need 5, got 4"):
        next(text_batches(torch.arange(4), block_size=4, batch_size=1))
    with pytest.raises(DataError, match="at least 1"):
        next(text_batches(torch.arange(9), block_size=4, batch_size=0))


def test_a_text_of_one_distinct_character_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a" * 300, encoding="utf-8")
    with pytest.raises(DataError, match="one distinct character"):
        load_text(path)


def test_an_upper_case_txt_suffix_is_text():
    assert data_kind("poem.TXT") == data_kind("poem.txt") == "text"
