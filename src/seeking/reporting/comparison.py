"""The comparison table: every arm's accuracy, cost and the paper's efficiency ratio.

ACC/FLOPs follows the paper: ``(Acc_new - Acc_ref) / (FLOPs_new - FLOPs_ref)`` with the classical
base as reference, in accuracy points per training TFLOP (FLOPs by the convention of
:mod:`seeking.training.flops`). For a motivated run the FLOPs are
the whole run's, shared by its two models.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

ARMS = (
    ("classical base", "classical_base", "base"),
    ("classical large", "classical_large", "motivated"),
    ("motivated base", "motivated", "base"),
    ("motivated large", "motivated", "motivated"),
    ("random-control base", "random_control", "base"),
    ("random-control large", "random_control", "motivated"),
)
COLUMNS = (
    "arm",
    "model",
    "test acc %",
    "train TFLOPs",
    "p",
    "wall s",
    "ACC/FLOPs (pts/TFLOP)",
    "FLOPs saving vs large",
)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def comparison_rows(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm, model) present in ``summaries`` (keyed by arm folder name)."""
    ref = summaries["classical_base"]
    ref_acc, ref_flops = ref["models"]["base"]["accuracy"], ref["train_flops"]
    large_flops = summaries.get("classical_large", {}).get("train_flops")
    rows = []
    for label, arm, role in ARMS:
        summary = summaries.get(arm)
        if summary is None or role not in summary["models"]:
            continue
        model = summary["models"][role]
        flops = summary["train_flops"]
        reference = arm == "classical_base"
        rows.append(
            {
                "arm": label,
                "model": model["model"],
                "test acc %": model["accuracy"],
                "train TFLOPs": flops / 1e12,
                "p": summary["p"],
                "wall s": summary["train_seconds"],
                "ACC/FLOPs (pts/TFLOP)": math.nan
                if reference
                else _ratio(model["accuracy"] - ref_acc, (flops - ref_flops) / 1e12),
                "FLOPs saving vs large": _ratio(large_flops, flops) if large_flops else math.nan,
            }
        )
    return rows


def cell_text(value: Any, column: str) -> str:
    """One value of the comparison table as it is shown."""
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "-"
    if column == "FLOPs saving vs large":
        return f"{value:.2f}x"
    if column == "train TFLOPs":
        return f"{value:.3f}"
    if column == "ACC/FLOPs (pts/TFLOP)":
        return f"{value:+.3g}"
    return f"{value:.2f}" if column != "wall s" else f"{value:.1f}"


def markdown_table(
    rows: list[dict[str, Any]],
    columns: Sequence[str] = COLUMNS,
    cell: Callable[[Any, str], str] = cell_text,
) -> str:
    """A markdown table of ``columns``, each value written by ``cell(value, column)``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r[c], c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def efficiency_gain(rows: list[dict[str, Any]]) -> float:
    """Motivated-large ACC/FLOPs over classical-scaling ACC/FLOPs (the paper's 'x higher').

    NaN (not defined) unless classical scaling gains accuracy: when the large model alone is no
    better than the base, the ratio of two slopes no longer says which is more efficient (two
    losses would give a large positive "gain")."""
    by_arm = {r["arm"]: r["ACC/FLOPs (pts/TFLOP)"] for r in rows}
    classical = by_arm.get("classical large", math.nan)
    return _ratio(by_arm.get("motivated large", math.nan), classical) if classical > 0 else math.nan


def gain_sentence(gain: float) -> str:
    """The efficiency gain as a sentence for the printed and written reports."""
    if math.isnan(gain):
        return (
            "ACC/FLOPs gain of motivation over classical scaling: not defined (the classical large model "
            "did not beat the classical base, so there is no scaling gain to compare with)"
        )
    return f"ACC/FLOPs gain of motivation over classical scaling: {gain:.3g}x"
