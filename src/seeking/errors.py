"""The project's error types: every expected failure is a ``SeekingError``.

The command line turns a ``SeekingError`` into one message and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable


class SeekingError(Exception):
    """Base class for errors caused by bad input (configuration, data, checkpoints)."""


class ConfigError(SeekingError, ValueError):
    """An option or a pair of models that cannot work together."""


class DataError(SeekingError):
    """A data set that is missing, malformed or in an unknown format."""


class CheckpointError(SeekingError):
    """A checkpoint file that cannot be read or does not fit the model."""


class RunFolderError(SeekingError):
    """A folder given to ``seeking report`` that is missing or holds no readable seeking run."""


class Diverged(SeekingError):
    """A run stopped because its loss or gradients stayed non-finite (``max_nonfinite`` steps in a row)."""


class StorageError(SeekingError):
    """A run folder that cannot be written (a full disk, a read-only folder); ``error`` is the ``OSError``."""

    def __init__(self, message: str, error: OSError) -> None:
        super().__init__(message)
        self.error = error


class SeekingWarning(UserWarning):
    """A run that goes on but may not mean what it seems (a degenerate option, a model never trained).

    The command line prints each as one ``seeking: warning:`` line on stderr, even with ``--quiet``."""


def unknown_choice(kind: str, name: object, choices: Iterable[str]) -> ConfigError:
    """The error for a ``name`` that is none of ``choices`` (a closed set, e.g. a registry's keys)."""
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}")
