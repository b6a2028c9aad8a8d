"""``seeking report``: PNG plots and one self-contained ``report.html`` for run folders.

Each folder given (a training run, a comparison or an Excitation experiment) gets a section with
its plots, tables, the command that made it and its configuration. Every folder is read before
anything is written; each file is written atomically, ``report.html`` last. Files are named
``<folder name>-<plot>.png`` so that the report of several folders keeps them apart.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..errors import ConfigError, StorageError
from ..flops import FLOPS_CONVENTION
from ..io import atomic_write_bytes
from ..runs import COMPARISON_JSON, SUMMARY
from ..version import __version__
from ..wording import counted
from . import html
from .comparison import (
    METRICS,
    NEVER_TRAINED,
    cell_text,
    comparison_rows,
    csv_table,
    gain_sentence,
    level_p,
    markdown_table,
    p_name,
    trained_steps,
)
from .excitation import BASELINE, arm_label, excitation_cells, excitation_rows
from .excitation_plots import curves_figure, phi_figure, utilization_figure
from .plots import accuracy_figure, cost_figure, loss_figure, png_bytes
from .runs import Comparison, ExcitationRun, Run, TrainRun, read_run_folder, resume_hint


class _Output:
    """The report folder: writes each file atomically and remembers what it wrote. A folder that
    cannot be written is one :class:`StorageError` naming it."""

    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"report folder {folder} is an existing file, not a folder; choose another --out")
        self.folder = folder
        self.files: list[Path] = []

    def _write(self, name: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.folder / name, data)
        except OSError as exc:
            raise StorageError(
                f"cannot write the report into {self.folder}: {exc.strerror or exc}; choose a writable --out", exc
            ) from None
        self.files.append(self.folder / name)

    def text(self, name: str, content: str) -> None:
        self._write(name, content.encode())

    def plot(self, name: str, figure: Figure, alt: str) -> str:
        """Save ``figure`` as ``name`` and return it as an embedded HTML image."""
        png = png_bytes(figure)
        self._write(name, png)
        return html.image(png, alt)


@dataclass
class Report:
    files: list[Path]  # every file written, report.html last
    incomplete: list[Path]  # the training runs (or arms) without summary.json


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> Report:
    """Write the report of ``run_dirs`` into ``out``."""
    runs = [read_run_folder(d) for d in run_dirs]  # a bad folder fails before anything is written
    output = _Output(Path(out))
    parts = [
        html.heading(1, "seeking report"),
        html.paragraph(
            f"Made by seeking {__version__} on {time.strftime('%Y-%m-%d %H:%M')} from "
            f"{', '.join(str(r.path) for r in runs)}. {FLOPS_CONVENTION}. Every plot is also saved as a PNG "
            "file beside this page."
        ),
    ]
    for run, label in zip(runs, _labels(runs), strict=True):
        if isinstance(run, TrainRun):
            parts += _train_section(run, label, output)
        elif isinstance(run, Comparison):
            parts += _comparison_section(run, label, output)
        else:
            parts += _excitation_section(run, label, output)
    output.text("report.html", html.page(f"seeking report: {', '.join(r.path.name for r in runs)}", parts))
    return Report(output.files, [r.path for r in _training_runs(runs) if not r.complete])


def _training_runs(runs: list[Run]) -> list[TrainRun]:
    """Every training run: the lone ones and the arms of comparisons."""
    out: list[TrainRun] = []
    for run in runs:
        out += run.arms.values() if isinstance(run, Comparison) else [run] if isinstance(run, TrainRun) else []
    return out


def _labels(runs: list[Run]) -> list[str]:
    labels: list[str] = []
    for run in runs:
        base = re.sub(r"[^\w.-]+", "_", run.path.resolve().name) or "run"
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}-{n}"
        labels.append(label)
    return labels


def _command(config: dict[str, Any]) -> list[str]:
    command = config.get("command")
    return [html.paragraph("Command:"), html.preformatted(shlex.join(command))] if command else []


def _config(config: dict[str, Any]) -> str:
    rows = [(k, json.dumps(v)) for k, v in config.items() if k != "command"]
    return html.details("Configuration", html.table(("option", "value"), rows))


def _incomplete_note(run: TrainRun) -> str:
    hint = resume_hint(run.path)
    return html.paragraph(
        f"Incomplete: {run.path} has no {SUMMARY} (the run stopped or is still running); shown as far as "
        f"it went: {len(run.epochs)} of {counted(run.config.get('epochs', '?'), 'epoch')}, "
        f"{counted(len(run.steps), 'step')}." + (f" {hint}" if hint else ""),
        note=True,
    )


def _facts(run: TrainRun) -> str:
    """The models' test accuracy (validation loss for text), the steps each trained and the run's
    cost, from the summary or (unfinished) the step log and the last epoch."""
    last = run.epochs[-1] if run.epochs else {}
    s = run.summary or {}
    models = s.get("models", {})
    counts = run.counts
    tested_loss = any(f"{role}_loss" in last for role in run.model_names)  # text: an unfinished run's last test
    metric = METRICS[s.get("metric", "loss" if tested_loss else "accuracy")]
    rows = []
    for role, name in run.model_names.items():
        accuracy = models[role][metric.key] if role in models else last.get(f"{role}_{metric.key}")
        parameters = models.get(role, {}).get("parameters")
        steps = trained_steps(counts, role)
        rows.append(
            (
                role,
                name,
                "-" if accuracy is None else cell_text(accuracy, metric.column),
                "-" if parameters is None else f"{parameters:,}",
                f"{steps} ({NEVER_TRAINED})" if steps == 0 else str(steps),
            )
        )

    def latest(key: str) -> float:
        return s.get(key, last.get(key, 0))

    if len(run.model_names) > 2:  # a chain: its p counts every level above the base; each level's own share
        shares = ", ".join(f"{role} {level_p(counts, role):.3f}" for role in run.model_names)
        share = f"fraction of the trained steps on a level above the base; p by level: {shares}"
    else:
        share = "motivated fraction of the trained steps"
    cost = (
        f"{p_name(run.model_names)} = {counts['p']:.3f} ({share}), "
        f"{counted(counts['switches'], 'switch', 'switches')}, "
        f"{counted(counts['skipped_steps'], 'skipped step')} (non-finite loss or gradient), "
        f"{s.get('train_flops', last.get('flops', 0)) / 1e12:.4g} training TFLOPs, "
        f"{latest('train_seconds'):.1f} s of training"
        + ("" if run.complete else f" (TFLOPs and seconds to the end of epoch {last.get('epoch', 0)})")
    )
    columns = ("model", "name", metric.column, "parameters", "steps trained")
    return html.table(columns, rows) + html.paragraph(cost)


def _run_plots(run: TrainRun, label: str, output: _Output, title: str) -> list[str]:
    parts = [output.plot(f"{label}-loss.png", loss_figure(run, f"Training loss: {title}"), f"training loss of {title}")]
    if any(key.endswith("_accuracy") for e in run.epochs for key in e):
        runs = {"": run}
        parts.append(output.plot(f"{label}-accuracy.png", accuracy_figure(runs, f"Test accuracy: {title}"), "accuracy"))
        parts.append(output.plot(f"{label}-cost.png", cost_figure(runs, f"Accuracy against cost: {title}"), "cost"))
    return parts


def _train_section(run: TrainRun, label: str, output: _Output) -> list[str]:
    title = f"{' inside '.join(run.model_names.values())}, condition {run.config.get('condition')}"
    excitation = run.config.get("excitation", BASELINE)  # runs before Motivation with Excitation: none
    if excitation != BASELINE:
        title += f", {arm_label(excitation)} (gamma {run.config.get('gamma')})"
    parts = [html.heading(2, f"Training run {run.path}: {title}")]
    if not run.complete:
        parts.append(_incomplete_note(run))
    parts += [_facts(run), *_run_plots(run, label, output, title), *_command(run.config), _config(run.config)]
    return parts


def _comparison_section(cmp: Comparison, label: str, output: _Output) -> list[str]:
    parts = [html.heading(2, f"Comparison {cmp.path}")]
    if not cmp.complete:
        hint = resume_hint(cmp.path)
        arms = ", ".join(cmp.arms) or "none yet"
        parts.append(html.paragraph(f"Incomplete: no {COMPARISON_JSON}; arms present: {arms}. {hint or ''}", note=True))
    if not cmp.arms:
        return [*parts, *_command(cmp.config), _config(cmp.config)]
    summaries = {arm: run.summary for arm, run in cmp.arms.items() if run.summary is not None}
    if "classical_base" in summaries:
        rows = comparison_rows(summaries)
        gain = gain_sentence(rows)
        output.text(f"{label}-comparison.md", markdown_table(rows) + f"\n\n{gain}\n\n{FLOPS_CONVENTION}.\n")
        output.text(f"{label}-comparison.csv", csv_table(rows))
        columns = list(rows[0])
        parts += [html.table(columns, [[cell_text(r[c], c) for c in columns] for r in rows]), html.paragraph(gain)]
    if any(key.endswith("_accuracy") for run in cmp.arms.values() for e in run.epochs for key in e):  # images
        parts.append(
            output.plot(f"{label}-accuracy.png", accuracy_figure(cmp.arms, "Test accuracy per epoch"), "accuracy")
        )
        parts.append(
            output.plot(
                f"{label}-cost.png", cost_figure(cmp.arms, "Test accuracy against training cost"), "accuracy vs FLOPs"
            )
        )
    config = cmp.config or next(iter(cmp.arms.values())).config
    parts += _command(config)
    for arm, run in cmp.arms.items():
        title = f"{arm.replace('_', ' ')} ({' inside '.join(run.model_names.values())})"
        parts.append(html.heading(3, title))
        if not run.complete:
            parts.append(_incomplete_note(run))
        parts.append(_facts(run))
        parts.append(output.plot(f"{label}-{arm}-loss.png", loss_figure(run, f"Training loss: {title}"), "loss"))
    parts.append(_config(config))
    return parts


def _excitation_section(run: ExcitationRun, label: str, output: _Output) -> list[str]:
    result = run.result
    parts = [html.heading(2, f"Excitation experiment {run.path}")]
    # the rows anew from the runs: a folder written before the table had intervals gets them too
    columns, rows = excitation_cells(excitation_rows(result["runs"], result["metric"]), result["metric"])
    parts.append(html.table(columns, [[r[c] for c in columns] for r in rows]))
    parts.append(output.plot(f"{label}-routing.png", curves_figure(result), "loss, metric and routing per step"))
    for name, figure in (("utilization", utilization_figure(result)), ("phi", phi_figure(result))):
        if figure is None:
            parts.append(html.paragraph(f"No {name} plot: this run did not record it (or has no Excitation arm)."))
        else:
            parts.append(output.plot(f"{label}-{name}.png", figure, name))
    return [*parts, *_command(run.config), _config(result.get("config", {}))]
