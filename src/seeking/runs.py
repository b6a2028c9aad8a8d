"""The run folder: the one owner of its file names, of starting, resuming and finishing it.

A run folder is written by one command (its *kind*: ``train``, ``compare``, ``excite``). It starts
with ``config.json`` (seeking's version, the kind, the command line, the configuration) and
``INCOMPLETE`` (how to continue it), claimed atomically (:func:`claim_run_dir`); it is complete once
its kind's result file exists (:data:`RUN_KINDS`), written last, after which ``INCOMPLETE`` goes.

This module needs nothing from the training layer (the reporting and the CLI read names from it);
under torchrun a caller passes its ranks as :class:`Processes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, StorageError
from .io import atomic_write_text, write_json
from .version import __version__

# The files and folders a run folder holds.
CONFIG = "config.json"  # written first: version, kind, command line, configuration
INCOMPLETE = "INCOMPLETE"  # present until the run completes; says how to continue it
SUMMARY = "summary.json"  # train's result (and each comparison arm's)
STEPS_LOG = "steps.jsonl"  # train: one line per step
EPOCHS_LOG = "epochs.jsonl"  # train: one line per epoch
COMPARISON_JSON, COMPARISON_MD, COMPARISON_CSV = "comparison.json", "comparison.md", "comparison.csv"
EXCITATION_JSON, EXCITATION_MD, EXCITATION_CSV = "excitation.json", "excitation.md", "excitation.csv"
EXCITE_RUNS = "runs"  # excite: one result file per finished arm and seed, see :func:`excite_run_name`
CHECKPOINTS = "checkpoints"  # training states for resuming (excite: one folder per arm and seed)
REPORT = "report"  # plots and report.html, written when the run completes
TENSORBOARD = "tensorboard"  # TensorBoard's event files, if asked for

# The first word of a training state (a file in CHECKPOINTS), which training/checkpoint.py writes: how
# any layer tells one from a model file.
STATE_MAGIC = "seeking-training-state"


def is_training_state(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a training state (whole or damaged)."""
    return head.startswith(f"{STATE_MAGIC} ".encode())


# The file of each model of a training run, by its role. Named by size, not "motivated": the large
# model of a classical run (condition ``always``) was never motivated.
MODEL_FILES = {"base": "base.safetensors", "motivated": "large.safetensors"}


def model_file(role: str) -> str:
    """The final model file of the model of ``role``: :data:`MODEL_FILES`' for a pair's roles, and
    ``<role>.safetensors`` for a chain's intermediate levels (``level1.safetensors``...)."""
    return MODEL_FILES.get(role, f"{role}.safetensors")


def excite_run_name(arm: str, seed: int) -> str:
    """The name of one arm and seed of an Excitation experiment: its result file
    (``runs/<name>.json``), its checkpoint folder and its TensorBoard run."""
    return f"{arm}-seed{seed}"


@dataclass(frozen=True)
class RunKind:
    """A kind of run folder: the ``result`` file whose presence means it finished, and the ``noun``
    that messages call such a run."""

    result: str
    noun: str


# The kinds of run folder, by the command that writes one (and resumes it). Each run folder's
# config.json records its kind.
RUN_KINDS = {
    "train": RunKind(SUMMARY, "run"),
    "compare": RunKind(COMPARISON_JSON, "comparison"),
    "excite": RunKind(EXCITATION_JSON, "experiment"),
}


class Processes(Protocol):
    """The processes of one run (``seeking.training.distributed.Ranks`` under torchrun): whether this
    one writes files (``main``), and how they wait for each other (``barrier``)."""

    @property
    def main(self) -> bool: ...

    def barrier(self) -> None: ...


class _Alone:
    """A run of one process: it writes, and waits for nobody."""

    main = True

    def barrier(self) -> None:
        pass


def resume_command(kind: str, run_dir: str | os.PathLike) -> str:
    """The command line that continues the unfinished run of ``kind`` in ``run_dir``."""
    return f"seeking {kind} --resume {run_dir}"


def run_config(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """What a run folder's ``config.json`` holds: seeking's version, the folder's kind, the command
    line, then the run's configuration ``values``."""
    return {"seeking_version": __version__, "kind": kind, "command": sys.argv, **values}


# For folders written before config.json recorded its kind: a key that tells it, tried in this order
# (a comparison's configuration holds a training's keys too).
_KIND_KEYS = {"compare": "random_control", "excite": "arms", "train": "base"}


def _folder_kind(saved: dict[str, Any]) -> str | None:
    """The kind of run folder a ``config.json`` belongs to, recorded or told by its keys; ``None`` if neither."""
    if "kind" in saved:
        return saved["kind"] if saved["kind"] in RUN_KINDS else None
    return next((kind for kind, key in _KIND_KEYS.items() if key in saved), None)


def refuse_complete(kind: str, run_dir: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` if the run folder of ``kind`` in ``run_dir`` has finished (holds
    its result file): a complete run is not resumed."""
    path, run_kind = Path(run_dir), RUN_KINDS[kind]
    if (path / run_kind.result).exists():
        raise ConfigError(f"cannot resume {path}: the {run_kind.noun} is complete (it has {run_kind.result})")


def read_run_config(run_dir: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The configuration saved in an unfinished run folder of ``kind`` (a key of :data:`RUN_KINDS`),
    for resuming it, without the bookkeeping keys. A missing, foreign, finished or other-kind folder
    is a :class:`ConfigError`; for another kind it names the command that resumes that folder."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"cannot resume {path}: no such run folder")
    try:
        saved = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise ConfigError(f"cannot resume {path}: it has no {CONFIG}, so it is not a seeking run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot resume {path}: its {CONFIG} cannot be read ({exc})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"cannot resume {path}: its {CONFIG} is not a JSON object")
    found = _folder_kind(saved)
    if found is None:
        raise ConfigError(
            f"cannot resume {path}: its {CONFIG} does not say which command wrote it "
            f"(seeking {', '.join(RUN_KINDS)}), so it is not a seeking run folder"
        )
    if found != kind:  # INCOMPLETE names the right command (a comparison's arm: the whole comparison)
        raise ConfigError(
            f"cannot resume {path} with seeking {kind}: it is a 'seeking {found}' folder; "
            f"continue it with: {recorded_resume_command(path) or resume_command(found, path)}"
        )
    version = saved.pop("seeking_version", None)
    if version != __version__:
        raise ConfigError(
            f"cannot resume {path}: it was started by seeking {version}; this is {__version__}: "
            "resume with the version that started it"
        )
    refuse_complete(kind, path)
    for bookkeeping in ("command", "kind"):
        saved.pop(bookkeeping, None)
    return saved


_CONTINUE = "Continue it with: "


def mark_incomplete(run_dir: Path, command: str) -> None:
    """Say in ``run_dir`` that the run has not finished, and the ``command`` that continues it."""
    atomic_write_text(
        run_dir / INCOMPLETE,
        f"This run has not finished: its results are missing or partial.\n{_CONTINUE}{command}\n",
    )


def recorded_resume_command(run_dir: Path) -> str | None:
    """The command that ``INCOMPLETE`` names for continuing the run, if the folder holds one."""
    try:
        lines = (run_dir / INCOMPLETE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix(_CONTINUE) for line in lines if line.startswith(_CONTINUE)), None)


def mark_complete(run_dir: Path) -> None:
    (run_dir / INCOMPLETE).unlink(missing_ok=True)


def check_new_run_dir(run_dir: str | os.PathLike) -> Path:
    """Refuse to mix a new run into an existing folder (a first check; :func:`claim_run_dir` decides)."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run folder {path} is an existing file, not a folder; choose another --out")
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"run folder {path} already exists and is not empty; choose another --out or remove it")
    return path


def claim_run_dir(
    run_dir: str | os.PathLike, record: dict[str, Any], resume: str, ranks: Processes | None = None
) -> Path:
    """Create the run folder with ``config.json`` (``record``) and ``INCOMPLETE`` (which names the
    ``resume`` command), or refuse.

    The claim is atomic: the folder is taken by creating ``INCOMPLETE`` with ``O_CREAT | O_EXCL``, so
    of several processes claiming one folder at once exactly one wins; the others get a
    ``ConfigError``. A folder that cannot be written gives a :class:`StorageError`, and whatever the
    claim created is removed again. Under torchrun (``ranks``) every rank checks, rank 0 claims.
    """
    path = check_new_run_dir(run_dir)
    ranks = ranks or _Alone()
    ranks.barrier()
    if not ranks.main:
        return path
    created = not path.exists()
    marker = path / INCOMPLETE
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise ConfigError(f"run folder {path} is taken by another run; choose another --out") from None
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise StorageError(
            f"cannot create the run folder {path}: {exc.strerror or exc}; choose a writable --out", exc
        ) from None
    others = [p.name for p in path.iterdir() if p.name != INCOMPLETE]
    if others:  # something arrived between the first check and the claim
        marker.unlink()
        raise ConfigError(f"run folder {path} already exists and is not empty; choose another --out or remove it")
    try:
        write_json(path / CONFIG, record)
        mark_incomplete(path, resume)
    except OSError as exc:  # nothing half-written: the folder is ours alone, so it goes back to how it was
        (path / CONFIG).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        if created:
            path.rmdir()
        raise StorageError(
            f"cannot write the run folder {path}: {exc.strerror or exc}; nothing was written; free space "
            "or choose a writable --out",
            exc,
        ) from None
    return path


def open_run_dir(
    kind: str,
    run_dir: str | os.PathLike,
    record: dict[str, Any],
    continue_with: str,
    *,
    resume: bool,
    ranks: Processes | None = None,
) -> Path:
    """Start or resume the run folder of ``kind`` in ``run_dir``. New (``resume=False``): claim it
    with ``config.json`` (``record``, see :func:`run_config`) and ``INCOMPLETE`` naming
    ``continue_with`` (:func:`claim_run_dir`). Resumed: refuse a complete one (:func:`refuse_complete`);
    finding its newest checkpoint is the caller's. Raises :class:`ConfigError` or :class:`StorageError`
    before anything is written."""
    if resume:
        refuse_complete(kind, run_dir)
        return Path(run_dir)
    return claim_run_dir(run_dir, record, continue_with, ranks)
