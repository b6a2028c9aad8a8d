"""Reading the folders that ``seeking train``, ``compare`` and ``excite`` write, for the report.

A training run may be unfinished (no ``summary.json``: stopped, or still running); it is read as far
as it goes, and the last line of a JSON-lines file is dropped if it is cut off mid-write.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunFolderError
from ..motivation.chain import run_models
from ..motivation.conditions import CONDITIONS
from ..runs import (
    COMPARISON_JSON,
    CONFIG,
    EPOCHS_LOG,
    EXCITATION_JSON,
    STEPS_LOG,
    SUMMARY,
    recorded_resume_command,
)
from .comparison import ARMS

ARM_FOLDERS = tuple(dict.fromkeys(folder for _, folder, _ in ARMS))


@dataclass
class TrainRun:
    """A run folder of ``seeking train`` (or one arm of a comparison)."""

    path: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    summary: dict[str, Any] | None  # None: the run did not finish

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def model_names(self) -> dict[str, str]:
        """Role (``base``, a chain's ``level1``..., ``motivated``) to model name, for the models this run
        trained (its condition's ``roles``: :func:`~seeking.motivation.run_models`). Raises
        :class:`RunFolderError` if the condition is not registered."""
        condition = self.config.get("condition")
        if condition not in CONDITIONS:
            raise RunFolderError(
                f"{self.path} was trained with the condition {condition!r}, which is not registered here: "
                "register it (seeking.motivation.register_condition) before reading the run"
            )
        names = [
            self.config.get("base", "base"),
            *self.config.get("intermediate", []),
            self.config.get("motivated", "motivated"),
        ]
        return run_models(names, CONDITIONS[condition].roles)

    @property
    def counts(self) -> dict[str, Any]:
        """What the run did, with the keys of ``summary.json``: ``steps`` (trained), ``motivated_steps``,
        ``p``, ``switches``, ``skipped_steps``. From the summary of a finished run; for an unfinished one
        counted from ``steps.jsonl``, which runs to its last step (its last epoch record may be far behind)."""
        if self.summary is not None:
            keys = ("steps", "motivated_steps", "p", "switches", "skipped_steps", "steps_by_model")
            return {key: self.summary[key] for key in keys if key in self.summary}  # older runs: no steps_by_model
        trained = [s for s in self.steps if "skipped" not in s]
        motivated = sum(s["model"] != "base" for s in trained)  # a chain's every level above the base
        models = [s["model"] for s in self.steps]
        return {
            "steps": len(trained),
            "motivated_steps": motivated,
            "steps_by_model": {role: sum(s["model"] == role for s in trained) for role in self.model_names},
            "p": motivated / len(trained) if trained else 0.0,
            "switches": sum(a != b for a, b in itertools.pairwise(models)),
            "skipped_steps": len(self.steps) - len(trained),
        }


@dataclass
class Comparison:
    """A folder of ``seeking compare``: its configuration and one training run per arm (by folder name)."""

    path: Path
    config: dict[str, Any]  # empty for folders written before compare saved its config.json
    arms: dict[str, TrainRun]
    complete: bool  # comparison.json is written last


@dataclass
class ExcitationRun:
    """A folder of ``seeking excite``: its configuration and the content of its ``excitation.json``."""

    path: Path
    config: dict[str, Any]  # empty for folders written before excite saved its config.json
    result: dict[str, Any]


Run = TrainRun | Comparison | ExcitationRun


def read_run_folder(path: str | Path) -> Run:
    """Whichever kind of run ``path`` holds, or a :class:`RunFolderError` that says what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"no such run folder: {path}")
    config = _read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    if (path / EXCITATION_JSON).is_file():
        return ExcitationRun(path, config, _read_json(path / EXCITATION_JSON))
    levels = sorted(p.name for p in path.glob("classical_level*"))  # a chain's twins of its intermediate levels
    arms = {arm: read_train_run(path / arm) for arm in [*ARM_FOLDERS, *levels] if (path / arm / CONFIG).is_file()}
    if arms or "random_control" in config:  # compare saves its config (with this key) before any arm starts
        return Comparison(path, config, arms, (path / COMPARISON_JSON).is_file())
    if (path / CONFIG).is_file():
        return read_train_run(path)
    raise RunFolderError(
        f"{path} holds no seeking run: expected {CONFIG} (seeking train), the arm folders "
        f"{', '.join(ARM_FOLDERS)} (seeking compare) or {EXCITATION_JSON} (seeking excite)"
    )


def resume_hint(path: Path) -> str | None:
    """How to continue an unfinished run, as the ``INCOMPLETE`` file it holds says, if any."""
    command = recorded_resume_command(path)
    return f"Continue it with: {command}" if command else None


def read_train_run(path: Path) -> TrainRun:
    config = _read_json(path / CONFIG)
    if "arms" in config:  # an Excitation experiment's configuration: it writes excitation.json when done
        raise RunFolderError(f"{path} is an Excitation experiment that has not finished (no {EXCITATION_JSON} yet)")
    summary = path / SUMMARY
    return TrainRun(
        path,
        config,
        _read_jsonl(path / STEPS_LOG),
        _read_jsonl(path / EPOCHS_LOG),
        _read_json(summary) if summary.is_file() else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path} is not a seeking run file: expected a JSON object")
    return value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; none if it is missing, and a cut-off last line is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run that is still writing
                break
            raise RunFolderError(f"{path} line {number} is not valid JSON: {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{path} line {number} is not a JSON object: {line[:80]!r}")
        records.append(record)
    return records
