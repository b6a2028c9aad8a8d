"""Checkpoints: the training states a run resumes from, its logs' marks, and a clean stop.

"Checkpoint" means this in seeking: a training state for resuming. A run's final models are model
files (:mod:`seeking.model_file`); the run folder itself is :mod:`seeking.runs`'s.

A training state is one file ``step-000001234.pt``: a header line (the format, its version and the
SHA-256 of the payload), then the payload, ``torch.save`` of plain dicts and tensors, read back with
``weights_only=True``. A truncated or damaged file is recognised by its checksum before anything in it
is used. Files are written aside, fsynced and renamed into place (:mod:`seeking.io`), so a kill at any
moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError, SeekingWarning
from ..io import atomic_write_bytes
from ..runs import STATE_MAGIC
from ..version import __version__

STATE_FORMAT = "1"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run. ``event`` says where; with ``command`` (a checkpoint was
    written) the message also says how to continue."""

    def __init__(self, event: str, command: str | None = None) -> None:
        self.event, self.command = event, command
        super().__init__(f"{event}: checkpoint written; continue with: {command}" if command else event)


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a training state atomically, with a checksum of its content."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = f"{STATE_MAGIC} {STATE_FORMAT} {hashlib.sha256(payload).hexdigest()}\n".encode()
    atomic_write_bytes(path, header + payload)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :func:`save_state`, or raise :class:`CheckpointError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    header, _, payload = data.partition(b"\n")
    fields = header.decode("ascii", errors="replace").split(" ")
    if len(fields) != 3 or fields[0] != STATE_MAGIC:
        raise CheckpointError(f"{path} is not a seeking training checkpoint")
    if fields[1] != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is a training checkpoint of format {fields[1]}; this seeking ({__version__}) reads format "
            f"{STATE_FORMAT}: resume with the seeking version that wrote it"
        )
    if hashlib.sha256(payload).hexdigest() != fields[2]:
        raise CheckpointError(f"{path} is damaged (truncated or corrupted: its checksum does not match)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a checksummed payload that does not load was not written by save_state
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from None


class Checkpoints:
    """A folder of numbered training states, of which the last ``keep`` are kept."""

    def __init__(self, folder: str | os.PathLike, keep: int = 1) -> None:
        self.folder, self.keep = Path(folder), keep

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt")) if self.folder.is_dir() else []

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.folder / f"step-{step:09d}.pt"
        save_state(path, state)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        for aside in self.folder.glob(".step-*.tmp"):  # left by a write that a kill interrupted
            aside.unlink(missing_ok=True)
        return path

    def latest(self) -> dict[str, Any] | None:
        """The newest state that loads (``None`` if there is none yet); a damaged file is skipped with a
        :class:`~seeking.errors.SeekingWarning` (shown even with ``--quiet``: the run resumes from further back)."""
        paths = self.paths()
        errors = []
        for path in reversed(paths):
            try:
                return load_state(path)
            except CheckpointError as exc:
                errors.append(str(exc))
                warnings.warn(f"{exc}; trying an older checkpoint", SeekingWarning, stacklevel=2)
        if errors:
            raise CheckpointError(
                f"no usable checkpoint in {self.folder}: {'; '.join(errors)}. Start the run again, "
                "or keep more checkpoints (--keep-checkpoints) so that an older one survives"
            )
        return None


def check_state(state: dict[str, Any], config: dict[str, Any], where: Path) -> None:
    """Refuse a state written by another seeking version or by a run with another configuration."""
    if state.get("seeking_version") != __version__:
        raise CheckpointError(
            f"the checkpoint in {where} was written by seeking {state.get('seeking_version')}; this is "
            f"{__version__}: resume with the version that wrote it"
        )
    saved = state.get("config", {})
    differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if differ:
        details = ", ".join(f"{k}={saved.get(k)!r} (run: {config.get(k)!r})" for k in differ)
        if all(k.endswith("_sha256") for k in differ):  # the same run, its data (or tokenizer) edited since
            raise CheckpointError(
                f"the data of the run in {where} changed since its checkpoint was written ({details}): resume "
                "on the data and tokenizer it started with, or start a new run"
            )
        raise CheckpointError(
            f"the checkpoint in {where} belongs to another run: it was written with {details}; "
            "resume each run from its own folder"
        )


@contextlib.contextmanager
def fitting(where: Path, what: str) -> Iterator[None]:
    """Within ``with``, a state dict that does not fit (missing keys, other shapes) is a ``CheckpointError``."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint in {where} does not fit {what}: {exc}") from None


def rng_state() -> dict[str, Any]:
    """torch's global random state (CPU, and each CUDA device if CUDA was used)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequests:
    """Within ``with``, the first Ctrl-C or SIGTERM only sets ``requested``: the loop finishes its step,
    writes a checkpoint and stops. A second one interrupts at once (the previous handlers are back).

    Nested in another (a comparison around its arms' training loops), it shares the outer one's
    request, so that a stop asked for as one arm ends stops the next arm rather than being lost."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    _open: ClassVar[list[StopRequests]] = []  # the ones inside whose ``with`` the program is, outermost first

    def __init__(self) -> None:
        self._requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._outer: StopRequests | None = None

    @property
    def requested(self) -> str | None:
        """The name of the signal that asked to stop, if one did."""
        return self._outer.requested if self._outer else self._requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._requested = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopRequests:
        self._outer = self._open[0] if self._open else None
        if self._outer is None and threading.current_thread() is threading.main_thread():  # signals reach it only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        self._open.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._open.remove(self)
        self._restore()
