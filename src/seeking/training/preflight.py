"""Before a run folder exists, and when writing it fails.

A run that cannot work is refused before its folder is created: the models are probed with one
forward and backward pass on a batch of the real input shape (:func:`probing`; training runs reuse
the pass that counts FLOPs), and the sizes derived from the data (splits, blocks, batches) are checked
by the loops. Then the folder is claimed atomically (:func:`seeking.runs.claim_run_dir`), so of two
runs started into one ``--out`` exactly one proceeds. A write that fails later (a full disk, a read-only folder)
becomes one :class:`~seeking.errors.StorageError` that says whether the run can be resumed, and how
(:func:`reports_storage_errors`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import ConfigError, SeekingError, StorageError
from ..runs import recorded_resume_command

# the errors a model raises on inputs it cannot take: shapes (RuntimeError), indices, asserts (timm)
SHAPE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kernel_hint(model: nn.Module, shape: tuple[int, ...]) -> str:
    """The usual cause of an image model failing on small images: a first convolution (a ViT's patch
    embedding) whose kernel is larger than the image."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or len(shape) != 4:
        return ""
    (kh, kw), (h, w) = conv.kernel_size, shape[-2:]
    if kh <= h and kw <= w:
        return ""
    fitting = max(p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0)
    return (
        f": patch size {kh}x{kw} (the kernel of its first convolution) does not fit {h}x{w} images; choose a "
        f"model with a patch of at most {min(h, w)}, or pass --model-kwargs '{{\"patch_size\": {fitting}}}' "
        "to a model that takes one, or use larger images"
    )


@contextlib.contextmanager
def probing(name: str, model: nn.Module, shape: tuple[int, ...], data: str) -> Iterator[None]:
    """Within ``with``, the first pass of ``model`` (named ``name``) on a batch of ``shape`` from ``data``:
    an error it raises there is a :class:`ConfigError` naming the model, the shape and the fix."""
    try:
        yield
    except SeekingError:
        raise
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from torch 2.5 on, the same class
        raise ConfigError(
            f"model {name!r} does not fit in memory with a batch of shape {tuple(shape)}: lower --batch-size"
        ) from None
    except SHAPE_ERRORS as exc:
        hint = _kernel_hint(model, shape) or "; check --model-kwargs, the data and the batch and block sizes"
        raise ConfigError(
            f"model {name!r} cannot run on {data} (a batch of shape {tuple(shape)}: {_first_line(exc)}){hint}"
        ) from None


def _storage_message(error: OSError, run_dir: Path, command: str) -> str:
    try:
        newest = max(run_dir.rglob("step-*.pt"), key=lambda p: p.stat().st_mtime, default=None)
    except OSError:  # the folder cannot even be listed: say nothing about its checkpoints
        newest = None
    state = (
        f"its checkpoints are whole (the newest: {newest})"
        if newest is not None
        else "it has no checkpoint yet, so resuming starts it again from step 0"
    )
    return (
        f"{error.filename or run_dir}: {error.strerror or error}. The run stopped; {state}. "
        f"Free space (or make the folder writable), then continue with: {command}"
    )


F = TypeVar("F", bound=Callable[..., Any])


def reports_storage_errors(fn: F) -> F:
    """Decorate a function ``fn(config, run_dir, ...)`` that writes a run folder: an ``OSError`` once
    the folder is claimed (it holds ``INCOMPLETE``) becomes a :class:`StorageError` that says whether
    the run is resumable and gives the command. A nested run's error (a comparison's arm) is said
    again in terms of the outer run. Before the claim, errors pass unchanged."""

    @functools.wraps(fn)
    def wrapper(config: Any, run_dir: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(config, run_dir, *args, **kwargs)
        except (OSError, StorageError) as exc:
            error = exc.error if isinstance(exc, StorageError) else exc
            command = recorded_resume_command(Path(run_dir))
            if command is None:  # not claimed (or already complete): nothing here to resume
                raise
            raise StorageError(_storage_message(error, Path(run_dir), command), error) from None

    return wrapper  # type: ignore[return-value]
