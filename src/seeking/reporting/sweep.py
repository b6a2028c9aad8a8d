"""What a sweep reports: each arm at its own best setting, the metric against the learning rate, the
width of the usable learning-rate range, and paired differences with 95% t intervals.

A sweep (:mod:`seeking.training.sweep`) runs every setting of a grid for every seed twice over:
*selection* cells test on a validation split held out of the training set, and the arm's best setting
is the one with the best mean validation metric over seeds (ties: the first in grid order); *test*
cells then train each arm at its chosen setting on the whole training set and test it on the test set.
The test figures alone are reported as results: the setting was chosen without them.

**Usable learning-rate range** (our definition, not the paper's): for an arm, hold its other options
at their chosen values and take the learning rates of the grid, in order, whose mean validation
metric is within ``within`` (in the metric's units: accuracy points by default) of the arm's best
mean; the range is the contiguous run of them around the best learning rate, and its width is
``log10(highest / lowest)`` in decades (0 for one learning rate). A range that reaches an end of the
grid is marked: the true range may be wider.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .comparison import markdown_table
from .plots import new_figure
from .stats import LEVEL, Interval, interval_text, mean_interval, paired_interval

LR = "lr"


def setting_name(setting: dict[str, Any]) -> str:
    """A setting as a folder name and a table cell: ``lr=0.1,momentum=0.9`` (``default`` for none)."""
    return ",".join(f"{name}={value}" for name, value in setting.items()) or "default"


@dataclass(frozen=True)
class Cell:
    """One finished cell: a setting of the grid, a seed, and each arm's metric."""

    setting: dict[str, Any]
    seed: int
    values: dict[str, float]


def _by_setting(cells: Sequence[Cell], arm: str) -> dict[str, tuple[dict[str, Any], dict[int, float]]]:
    """``{setting name: (setting, {seed: value})}`` of one arm, in grid order."""
    out: dict[str, tuple[dict[str, Any], dict[int, float]]] = {}
    for cell in cells:
        if arm in cell.values:
            out.setdefault(setting_name(cell.setting), (cell.setting, {}))[1][cell.seed] = cell.values[arm]
    return out


def _summary(values: Iterable[float]) -> Interval:
    """The mean over seeds and its interval; NaN if some seed's run diverged (NaN): a setting that
    diverges for any seed is not chosen and not usable."""
    values = list(values)
    if any(math.isnan(v) for v in values):
        return Interval(len(values), math.nan, None, None, None)
    return mean_interval(values)


def arms_of(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(arm for cell in cells for arm in cell.values))


def choose(cells: Sequence[Cell], arm: str, sign: int) -> dict[str, Any]:
    """The setting with the best mean metric of ``arm`` over seeds (``sign`` +1: higher is better), the
    first in grid order on a tie; a setting where some seed diverged (NaN) is never chosen. Raises
    ``ValueError`` if no setting has a defined mean."""
    means = {
        name: (setting, _summary(values.values()).mean) for name, (setting, values) in _by_setting(cells, arm).items()
    }
    defined = [(setting, mean) for setting, mean in means.values() if not math.isnan(mean)]
    if not defined:
        raise ValueError(f"arm {arm!r} has no finite result in any setting")
    return max(defined, key=lambda pair: sign * pair[1])[0]


def lr_curve(cells: Sequence[Cell], arm: str, chosen: dict[str, Any], lr: float) -> list[tuple[float, Interval]]:
    """The arm's mean metric and its t interval over seeds at each learning rate of the grid (``lr``
    when the grid has none), its other options held at ``chosen``; sorted by learning rate."""
    others = {k: v for k, v in chosen.items() if k != LR}
    points = [
        (setting.get(LR, lr), _summary(values.values()))
        for setting, values in _by_setting(cells, arm).values()
        if {k: v for k, v in setting.items() if k != LR} == others
    ]
    return sorted(points, key=lambda point: point[0])


@dataclass(frozen=True)
class UsableRange:
    """The usable learning rates of an arm (see the module's docstring)."""

    low: float
    high: float
    at_low_end: bool  # the range reaches the grid's lowest learning rate
    at_high_end: bool

    @property
    def decades(self) -> float:
        return math.log10(self.high / self.low)

    def text(self) -> str:
        low = f"<={self.low:g}" if self.at_low_end else f"{self.low:g}"
        high = f">={self.high:g}" if self.at_high_end else f"{self.high:g}"
        wider = " (at least: the range reaches the grid's end)" if self.at_low_end or self.at_high_end else ""
        return f"{low} to {high}: {self.decades:.2f} decades{wider}"


def usable_range(curve: Sequence[tuple[float, Interval]], sign: int, within: float) -> UsableRange:
    """The contiguous learning rates around the best one whose mean is within ``within`` of the best
    mean (``curve`` sorted by learning rate, as :func:`lr_curve` gives it)."""
    means = [sign * interval.mean for _, interval in curve]
    best = max(range(len(curve)), key=lambda i: (not math.isnan(means[i]), means[i]))
    usable = [not math.isnan(m) and means[best] - m <= within for m in means]
    low = high = best
    while low > 0 and usable[low - 1]:
        low -= 1
    while high < len(curve) - 1 and usable[high + 1]:
        high += 1
    return UsableRange(curve[low][0], curve[high][0], low == 0, high == len(curve) - 1)


def sweep_rows(
    cells: Sequence[Cell],
    chosen: dict[str, dict[str, Any]],
    tested: dict[str, dict[int, float]],
    sign: int,
    within: float,
    lr: float,
) -> list[dict[str, Any]]:
    """One row per arm: its chosen setting, its validation mean there (``None`` if ``cells``, the selection,
    is empty), its test metric over seeds (mean, interval, n) and its usable learning-rate range (``None``
    without a selection over learning rates; ``lr``: the learning rate of every cell when the grid has none)."""
    rows = []
    for arm, setting in chosen.items():
        selected = _by_setting(cells, arm).get(setting_name(setting))  # None: no selection was run
        validation = _summary(selected[1].values()) if selected else None
        test = mean_interval(tested[arm].values())
        lrs = usable_range(lr_curve(cells, arm, setting, lr), sign, within) if selected and LR in setting else None
        rows.append(
            {
                "arm": arm,
                "chosen setting": setting_name(setting),
                "validation": validation,
                "test": test,
                "usable lr": lrs,
            }
        )
    return rows


def paired_rows(tested: dict[str, dict[int, float]], pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per ``(arm, reference)`` pair present: the per-seed test differences' mean and interval."""
    return [
        {"arm": arm, "reference": reference, "difference": paired_interval(tested[arm], tested[reference])}
        for arm, reference in pairs
        if arm in tested and reference in tested
    ]


def rows_json(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their intervals and ranges as plain fields, for JSON and CSV."""
    out = []
    for row in rows:
        flat: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, Interval):
                flat |= {key: value.mean, f"{key} ci low": value.low, f"{key} ci high": value.high, f"{key} n": value.n}
            elif isinstance(value, UsableRange):
                flat |= {"usable lr low": value.low, "usable lr high": value.high, "usable lr decades": value.decades}
                flat["usable lr at grid end"] = value.at_low_end or value.at_high_end
            elif value is not None or key not in ("usable lr", "validation"):
                flat[key] = value
        out.append(flat)
    return out


def _cell(value: Any, column: str) -> str:
    if isinstance(value, Interval):
        sign = "+" if column.startswith("difference") else ""
        text = interval_text(value, sign + ".2f")
        return f"{text}, n={value.n}" if value.n > 1 else text
    if isinstance(value, UsableRange):
        return value.text()
    return "-" if value is None else str(value)


def sweep_markdown(rows: Sequence[dict[str, Any]], paired: Sequence[dict[str, Any]], metric: str) -> str:
    """The arms table and the paired table, in markdown; the metric is named in the headers."""
    level = f"{LEVEL:.0%}"
    arms = [
        {
            "arm": r["arm"],
            "chosen setting": r["chosen setting"],
            f"validation {metric} (mean [{level} CI])": r["validation"],
            f"test {metric} (mean [{level} CI])": r["test"],
            "usable lr range": r["usable lr"],
        }
        for r in rows
    ]
    pairs = [
        {
            "arm": r["arm"],
            "vs": r["reference"],
            f"difference in test {metric} (paired by seed, {level} CI)": r["difference"],
        }
        for r in paired
    ]
    table = markdown_table(arms, cell=_cell)
    return table if not pairs else f"{table}\n\n{markdown_table(pairs, cell=_cell)}"


def curve_figure(curves: dict[str, list[tuple[float, Interval]]], metric: str, title: str) -> Figure:
    """The validation metric against the learning rate (log scale, labelled at the swept learning rates
    alone), one line per arm, with the 95% intervals over seeds as error bars (none for one seed)."""
    figure = new_figure()
    ax = figure.add_subplot()
    for arm, curve in curves.items():
        lrs = [lr for lr, _ in curve]
        means = [interval.mean for _, interval in curve]
        errors = [interval.half_width or 0.0 for _, interval in curve]
        ax.errorbar(lrs, means, yerr=errors, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    # the swept learning rates are the labels: log-scale minor labels (3x10^-2 beside 4x10^-2) overlap
    swept = sorted({lr for curve in curves.values() for lr, _ in curve})
    ax.set_xticks(swept, [f"{lr:g}" for lr in swept])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {metric} (mean over seeds, {LEVEL:.0%} CI)")
    ax.set_title(title)
    ax.legend()
    return figure
