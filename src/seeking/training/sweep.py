"""``seeking sweep``: every arm of ``compare`` or ``excite`` over a grid of settings and seeds, each arm
reported at its own best setting, chosen on a validation split (see :mod:`seeking.reporting.sweep`
for what is reported and the definition of the usable learning-rate range).

The folder ``out`` holds one ordinary run folder per cell: ``select/<setting>/[<arm>/]seed<s>/``
(trained without the ``holdout`` validation images and tested on them) and
``test/<setting>/[<arm>/]seed<s>/`` (each arm at its chosen setting, trained on the whole training
set, tested on the test set; excite runs one arm a cell, compare all together); then
``sweep.{md,csv,json}`` and ``sweep_lr.png``. A cell whose run diverged holds ``DIVERGED``.
Running the same sweep again continues it: a finished cell is read back, an unfinished one resumed
from its checkpoint, and a cell whose saved options differ from the sweep's is refused. Widening
the grid or adding seeds reuses the cells already run.
Image data only: a text file has a validation split but no test split apart from it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Diverged
from ..io import atomic_write_bytes, atomic_write_text, write_json
from ..motivation import chain_roles
from ..reporting.comparison import METRICS, comparison_arms, csv_table, paired_arms
from ..reporting.excitation import BASELINE, arm_label
from ..reporting.plots import png_bytes
from ..reporting.sweep import (
    Cell,
    arms_of,
    choose,
    curve_figure,
    lr_curve,
    paired_rows,
    rows_json,
    setting_name,
    sweep_markdown,
    sweep_rows,
)
from ..runs import CONFIG, RUN_KINDS
from ..version import __version__
from .compare import compare
from .config import ExciteConfig, RunConfig, TrainConfig, field_annotation
from .excite import compare_excitation
from .tasks import data_kind

SWEEP_JSON, SWEEP_MD, SWEEP_CSV, SWEEP_PLOT = "sweep.json", "sweep.md", "sweep.csv", "sweep_lr.png"
DIVERGED = "DIVERGED"  # in a cell whose run diverged: the message; the cell counts as done, its arms as NaN
SCALARS = ("int", "float", "str", "bool")
# what the sweep sets itself: a grid over these would be silently overridden
NOT_IN_GRID = ("seed", "seeds", "holdout", "arms")


@dataclass(frozen=True)
class SweepKind:
    """A command a sweep runs: its configuration, how one seed's cell runs and reads back, and which
    arms are compared with which (``pairs``: ``(arm, reference)`` by arm label)."""

    config_type: type[RunConfig]
    run: Callable[[RunConfig, Path, bool, bool, Callable[[str], None]], dict[str, Any]]
    one_seed: Callable[[RunConfig, int], RunConfig]
    values: Callable[[dict[str, Any]], dict[str, float]]
    diverged: Callable[[Any], dict[str, float]]  # a diverged cell's values (NaN), from its configuration
    pairs: Callable[[list[str]], list[tuple[str, str]]]
    # the options that run one arm (by its label) of a configuration alone, if the command can
    arm_option: Callable[[Any, str], dict[str, Any]] | None


def _run_compare(config: Any, folder: Path, resume: bool, progress: bool, log: Callable[[str], None]) -> dict:
    return compare(config, folder, resume=resume, progress=progress, log=log, report=False)


def _run_excite(config: Any, folder: Path, resume: bool, progress: bool, log: Callable[[str], None]) -> dict:
    return compare_excitation(config, folder, log=log, resume=resume, progress=progress, report=False)


SWEEP_KINDS = {
    "compare": SweepKind(
        TrainConfig,
        _run_compare,
        lambda config, seed: dataclasses.replace(config, seed=seed),
        lambda result: {row["arm"]: row[METRICS["accuracy"].column] for row in result["rows"]},
        # its arms run together: all count (a chain's: each level and its twin)
        lambda config: {label: math.nan for label, _, _ in comparison_arms(chain_roles(len(config.intermediate) + 2))},
        paired_arms,
        None,
    ),
    "excite": SweepKind(
        ExciteConfig,
        _run_excite,
        lambda config, seed: dataclasses.replace(config, seeds=[seed]),
        lambda result: {arm_label(run["arm"]): run[result["metric"]] for run in result["runs"]},
        lambda config: {arm_label(arm): math.nan for arm in config.arms},
        lambda arms: [(arm, arm_label(BASELINE)) for arm in arms if arm != arm_label(BASELINE)],
        lambda config, label: {"arms": [arm for arm in config.arms if arm_label(arm) == label]},
    ),
}


def check_grid(kind: str, config: RunConfig, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every setting of ``grid`` (``{option: values}``; their product, in order), each checked as a
    configuration. Raises ``ConfigError`` naming a bad option or value."""
    fields = {f.name: f for f in dataclasses.fields(SWEEP_KINDS[kind].config_type)}
    for name, values in grid.items():
        if name not in fields:
            raise ConfigError(
                f"the grid names {name!r}, which is no option of seeking {kind}; known: {', '.join(fields)}"
            )
        if name in NOT_IN_GRID or field_annotation(fields[name]).removesuffix(" | None") not in SCALARS:
            raise ConfigError(
                f"{name} cannot be swept: the sweep sets seeds and the holdout itself, and a grid takes options "
                "of one value (numbers, names, switches)"
            )
        if not values or len(set(map(repr, values))) != len(values):
            raise ConfigError(f"the grid of {name} must give distinct values, at least one, got {values}")
    settings = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    for setting in settings:
        if "/" in setting_name(setting):
            raise ConfigError(f"a grid value must not hold '/' (it names a folder), got {setting_name(setting)!r}")
        dataclasses.replace(config, **setting).validate()
    return settings


def _expected_record(kind: str, config: RunConfig) -> dict[str, Any]:
    values = config.to_dict() | ({"random_control": True} if kind == "compare" else {})
    return json.loads(json.dumps(values))  # as config.json holds it: lists for tuples


def _run_cell(
    kind: str, config: RunConfig, folder: Path, progress: bool, log: Callable[[str], None]
) -> dict[str, float]:
    """One cell's values by arm: read back if finished, else run (resumed if started). A run that
    diverges is a result (a learning rate too high): its arms get NaN, and the cell is marked done
    (``DIVERGED``). A folder started with other options is a ``ConfigError``."""
    spec = SWEEP_KINDS[kind]
    try:
        return spec.values(_cell_result(kind, config, folder, progress, log))
    except Diverged as exc:
        atomic_write_text(folder / DIVERGED, f"{exc}\n")
        log(f"== cell {folder}: diverged ({exc}); its arms count as NaN")
        return spec.diverged(config)


def _cell_result(
    kind: str, config: RunConfig, folder: Path, progress: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    if (folder / CONFIG).exists():
        saved = json.loads((folder / CONFIG).read_text())
        expected = _expected_record(kind, config)
        differ = sorted(k for k in expected if saved.get(k) != expected[k])
        if differ or saved.get("seeking_version") != __version__:
            what = ", ".join(differ) or f"the seeking version ({saved.get('seeking_version')})"
            raise ConfigError(
                f"{folder} was run with other options ({what}) than this sweep's: choose another --out, "
                "or run the sweep that started it"
            )
        if (folder / DIVERGED).exists():
            raise Diverged((folder / DIVERGED).read_text().strip())
        result_file = folder / RUN_KINDS[kind].result
        if result_file.exists():
            log(f"== cell {folder}: finished before, read back")
            return json.loads(result_file.read_text())
        log(f"== cell {folder}: resuming")
        return SWEEP_KINDS[kind].run(config, folder, True, progress, log)
    log(f"== cell {folder}")
    return SWEEP_KINDS[kind].run(config, folder, False, progress, log)


def sweep(
    kind: str,
    config: RunConfig,
    grid: dict[str, list[Any]],
    seeds: list[int],
    out: str | Path,
    *,
    within: float = 2.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``kind`` (``compare`` or ``excite``) over every setting of ``grid`` and every seed, choose
    each arm's setting on the validation split of ``config.holdout`` images, test each arm at its
    choice, and write ``sweep.{md,csv,json}`` and ``sweep_lr.png`` into ``out``. Without a holdout the
    grid must have one setting (or none): then every arm is tested at it, for the paired intervals
    over seeds alone.

    ``within``: the usable learning-rate range's tolerance, in the metric's units (accuracy points).
    Returns the JSON's content. Raises ``ConfigError`` for bad input, before anything is written."""
    if kind not in SWEEP_KINDS:
        raise ConfigError(f"seeking sweep runs {' or '.join(SWEEP_KINDS)}, got {kind!r}")
    spec = SWEEP_KINDS[kind]
    config.validate()
    if data_kind(config.data) != "image":
        raise ConfigError(
            "seeking sweep needs image data: it chooses settings on images held out of the training set and "
            "reports the test set; a text file has one validation split only"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {seeds}")
    if not within >= 0:
        raise ConfigError(f"within (the usable learning-rate range's tolerance) must be >= 0, got {within}")
    settings = check_grid(kind, config, grid)
    if config.holdout is None and len(settings) > 1:
        raise ConfigError("seeking sweep chooses settings on a validation split: give --holdout N (training images)")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    if (out / CONFIG).exists():  # a sweep's own folder holds its cells in select/ and test/, never a run's files
        raise ConfigError(
            f"--out {out} is the run folder of a seeking train, compare or excite run, not a sweep's: "
            "choose another --out (a sweep writes its cells under select/ and test/)"
        )
    metric = METRICS["accuracy"]

    def run(setting: dict[str, Any], phase: str, arms: list[str] | None) -> list[Cell]:
        """Every seed's cells of ``setting``: ``select`` on the holdout, ``test`` on the test set; one cell
        per arm of ``arms`` if the command can run one arm alone (a diverged arm then spoils no other)."""
        cell_config = dataclasses.replace(config, **setting, holdout=config.holdout if phase == "select" else None)
        folder = out / phase / setting_name(setting)
        units = [(cell_config, folder)]
        if arms is not None and spec.arm_option is not None:
            units = [
                (dataclasses.replace(cell_config, **spec.arm_option(config, arm)), folder / arm.replace(" ", "_"))
                for arm in arms
            ]
        return [
            Cell(setting, seed, _run_cell(kind, spec.one_seed(unit, seed), where / f"seed{seed}", progress, log))
            for unit, where in units
            for seed in seeds
        ]

    every_arm = list(spec.diverged(config))  # the arm labels, in their order
    if config.holdout is None:  # one setting: nothing to choose, every arm is tested at it
        selection, tests = [], run(settings[0], "test", None)
        arms = arms_of(tests)
        chosen = dict.fromkeys(arms, settings[0])
    else:
        selection = [cell for setting in settings for cell in run(setting, "select", every_arm)]
        arms = arms_of(selection)
        chosen = {arm: choose(selection, arm, metric.sign) for arm in arms}
        tests = [cell for arm, setting in chosen.items() for cell in run(setting, "test", [arm])]
    tested = {
        arm: {cell.seed: cell.values[arm] for cell in tests if arm in cell.values and cell.setting == chosen[arm]}
        for arm in arms
    }

    rows = sweep_rows(selection, chosen, tested, metric.sign, within, config.lr)
    paired = paired_rows(tested, spec.pairs(arms))
    table = sweep_markdown(rows, paired, metric.column.removeprefix("test "))
    result = {
        "seeking_version": __version__,
        "kind": kind,
        "config": config.to_dict(),
        "grid": grid,
        "seeds": seeds,
        "within": within,
        "rows": rows_json(rows),
        "paired": rows_json(paired),
        "selection": [dataclasses.asdict(cell) for cell in selection],
        "tested": tested,
        "diverged": sorted(str(path.parent) for path in out.glob(f"**/{DIVERGED}")),
        "table": table,
    }
    if selection:
        curves = {arm: lr_curve(selection, arm, setting, config.lr) for arm, setting in chosen.items()}
        title = f"{kind} on {Path(config.data).name}: validation ({config.holdout} held-out images), seeds {seeds}"
        figure = curve_figure(curves, metric.column.removeprefix("test "), title)
        atomic_write_bytes(out / SWEEP_PLOT, png_bytes(figure))
    atomic_write_text(out / SWEEP_MD, table + "\n")
    atomic_write_text(out / SWEEP_CSV, csv_table(result["rows"]))
    write_json(out / SWEEP_JSON, result)
    return result
