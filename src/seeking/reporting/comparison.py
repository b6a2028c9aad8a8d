"""The comparison table: every arm's accuracy, cost and the paper's efficiency ratio.

ACC/FLOPs follows the paper: ``(Acc_new - Acc_ref) / (FLOPs_new - FLOPs_ref)`` with the classical
base as reference, in accuracy points per training TFLOP (FLOPs by the convention of
:mod:`seeking.flops`). For a motivated run the FLOPs are
the whole run's, shared by its two models.

Each row also shows what the arm really did: its realised ``p``, how many steps trained the large
model and how many were skipped (non-finite loss or gradient). A model that trained on no step gets
"never trained" in place of an efficiency and a saving: its weights are where it started.
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
    "large steps",
    "skipped steps",
    "wall s",
    "ACC/FLOPs (pts/TFLOP)",
    "FLOPs saving vs large",
)


NEVER_TRAINED = "never trained"


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def trained_steps(summary: dict[str, Any], role: str) -> int:
    """Steps on which the ``role`` model (``base`` or ``motivated``) of a run stepped, from its summary."""
    return summary["motivated_steps"] if role == "motivated" else summary["steps"] - summary["motivated_steps"]


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
        if trained_steps(summary, role) == 0:
            efficiency = saving = NEVER_TRAINED
        else:
            gained = model["accuracy"] - ref_acc
            efficiency = math.nan if arm == "classical_base" else _ratio(gained, (flops - ref_flops) / 1e12)
            saving = _ratio(large_flops, flops) if large_flops else math.nan
        rows.append(
            {
                "arm": label,
                "model": model["model"],
                "test acc %": model["accuracy"],
                "train TFLOPs": flops / 1e12,
                "p": summary["p"],
                "large steps": summary["motivated_steps"],
                "skipped steps": summary["skipped_steps"],
                "wall s": summary["train_seconds"],
                "ACC/FLOPs (pts/TFLOP)": efficiency,
                "FLOPs saving vs large": saving,
            }
        )
    return rows


def cell_text(value: Any, column: str) -> str:
    """One value of the comparison table as it is shown."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if column == "FLOPs saving vs large":
        return f"{value:.2f}x"
    if column in ("train TFLOPs", "p"):
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
    by_arm = {r["arm"]: _number(r["ACC/FLOPs (pts/TFLOP)"]) for r in rows}
    classical = by_arm.get("classical large", math.nan)
    return _ratio(by_arm.get("motivated large", math.nan), classical) if classical > 0 else math.nan


def _number(value: float | str) -> float:
    return math.nan if isinstance(value, str) else value


def gain_sentence(rows: list[dict[str, Any]]) -> str:
    """The efficiency gain of ``rows`` as a sentence for the printed and written reports, saying why
    when it is not defined."""
    gain = efficiency_gain(rows)
    if not math.isnan(gain):
        return f"ACC/FLOPs gain of motivation over classical scaling: {gain:.3g}x"
    motivated_large = [r for r in rows if r["arm"] == "motivated large"]
    if motivated_large and motivated_large[0]["ACC/FLOPs (pts/TFLOP)"] == NEVER_TRAINED:
        why = "the motivated run never trained its large model"
    else:
        why = "the classical large model did not beat the classical base, so there is no scaling gain to compare with"
    return f"ACC/FLOPs gain of motivation over classical scaling: not defined ({why})"
