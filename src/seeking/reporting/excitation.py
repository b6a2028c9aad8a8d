"""The Excitation table: per arm, mean and standard deviation over seeds, and the paired difference
to the plain optimizer (same seed, same initial weights, same batches)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .comparison import csv_table, markdown_table

MEASURES = ("train_loss", "dead_fraction", "max_violation", "load_entropy", "specialization", "optimizer_step_ms")
BASELINE = "none"


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the deviation of one value is not defined: ``None``."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def arm_label(arm: str) -> str:
    return "plain optimizer" if arm == BASELINE else f"excitation {arm}"


def excitation_rows(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per arm, in the order the arms were run: ``<measure>`` = mean, ``<measure> std`` (``None``
    for one seed), and ``skipped steps``, summed over the seeds."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    baseline = {r["seed"]: r[metric] for r in runs if r["arm"] == BASELINE}
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row: dict[str, Any] = {"arm": arm_label(arm), "seeds": len(mine)}
        row["skipped steps"] = sum(r.get("skipped_steps", 0) for r in mine)  # all seeds: non-finite, not trained
        for measure in (metric, *MEASURES):
            row[measure], row[f"{measure} std"] = _mean_std([r.get(measure, math.nan) for r in mine])
        paired = [r[metric] - baseline[r["seed"]] for r in mine if r["seed"] in baseline and arm != BASELINE]
        row[f"{metric} vs plain"], row[f"{metric} vs plain std"] = _mean_std(paired)
        rows.append(row)
    return rows


def _columns(metric: str) -> list[str]:
    return ["arm", "seeds", "skipped steps", metric, f"{metric} vs plain", *MEASURES]


def _shown(row: dict[str, Any], column: str) -> str:
    value = row[column]
    if isinstance(value, str) or column in ("seeds", "skipped steps"):
        return str(value)
    if math.isnan(value):
        return "-"
    digits = 2 if column == "optimizer_step_ms" else 3
    sign = "+" if column.endswith("vs plain") else ""
    std = row[f"{column} std"]
    spread = "" if std is None or math.isnan(std) else f" ± {std:.{digits}f}"  # none for one seed
    return f"{value:{sign}.{digits}f}{spread}"


def excitation_cells(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], list[dict[str, str]]]:
    """The table's columns and its rows as text (mean ± std; the mean alone for one seed)."""
    columns = _columns(metric)
    return columns, [{c: _shown(r, c) for c in columns} for r in rows]


def excitation_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    columns, shown = excitation_cells(rows, metric)
    return markdown_table(shown, columns, lambda value, column: value)


def excitation_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else []
    return csv_table(rows, columns)
