"""The Excitation table: per arm, mean and standard deviation over seeds, and the paired difference
to the plain optimizer (same seed, same initial weights, same batches) with its 95% t interval
(:mod:`.stats`)."""

from __future__ import annotations

import math
from typing import Any

from .comparison import csv_table, markdown_table
from .stats import LEVEL, Interval, interval_fields, interval_text, mean_interval, paired_interval

MEASURES = ("train_loss", "dead_fraction", "max_violation", "load_entropy", "specialization", "optimizer_step_ms")
BASELINE = "none"


def arm_label(arm: str) -> str:
    return "plain optimizer" if arm == BASELINE else f"excitation {arm}"


def excitation_rows(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per arm, in the order the arms were run: ``<measure>`` = mean, ``<measure> std`` (``None``
    for one seed), ``skipped steps`` summed over the seeds, and ``<metric> vs plain``: the mean paired
    difference to the plain optimizer, its ``std``, ``ci low``, ``ci high`` (``None`` below two seeds) and
    ``n`` (the seeds both arms ran; NaN and 0 for the plain optimizer itself)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    baseline = {r["seed"]: r[metric] for r in runs if r["arm"] == BASELINE}
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row: dict[str, Any] = {"arm": arm_label(arm), "seeds": len(mine)}
        row["skipped steps"] = sum(r.get("skipped_steps", 0) for r in mine)  # all seeds: non-finite, not trained
        for measure in (metric, *MEASURES):
            summary = mean_interval(r.get(measure, math.nan) for r in mine)
            row[measure], row[f"{measure} std"] = summary.mean, summary.std
        paired = paired_interval({r["seed"]: r[metric] for r in mine} if arm != BASELINE else {}, baseline)
        row |= interval_fields(paired, f"{metric} vs plain")
        row[f"{metric} vs plain std"] = paired.std
        rows.append(row)
    return rows


def _paired_column(metric: str) -> str:
    return f"{metric} vs plain ({LEVEL:.0%} CI)"


def _columns(metric: str) -> list[str]:
    return ["arm", "seeds", "skipped steps", metric, _paired_column(metric), *MEASURES]


def _shown(row: dict[str, Any], column: str) -> str:
    if column.endswith("CI)"):  # the paired difference: mean [low, high]
        prefix = column.removesuffix(f" ({LEVEL:.0%} CI)")
        mean, low, high, n = (row[f"{prefix}{key}"] for key in ("", " ci low", " ci high", " n"))
        return interval_text(Interval(n, mean, None, low, high), "+.3f")
    value = row[column]
    if isinstance(value, str) or column in ("seeds", "skipped steps"):
        return str(value)
    if math.isnan(value):
        return "-"
    digits = 2 if column == "optimizer_step_ms" else 3
    std = row[f"{column} std"]
    spread = "" if std is None or math.isnan(std) else f" ± {std:.{digits}f}"  # none for one seed
    return f"{value:.{digits}f}{spread}"


def excitation_cells(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], list[dict[str, str]]]:
    """The table's columns and its rows as text: mean ± std (the mean alone for one seed), and the paired
    difference to the plain optimizer as ``mean [95% CI]``."""
    columns = _columns(metric)
    return columns, [{c: _shown(r, c) for c in columns} for r in rows]


def excitation_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    columns, shown = excitation_cells(rows, metric)
    return markdown_table(shown, columns, lambda value, column: value)


def excitation_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else []
    return csv_table(rows, columns)
