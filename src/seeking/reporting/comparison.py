"""The comparison table: every arm's accuracy, cost and the paper's efficiency ratio.

ACC/FLOPs follows the paper: ``(Acc_new - Acc_ref) / (FLOPs_new - FLOPs_ref)`` with the classical
base as reference, in accuracy points per training TFLOP (FLOPs by the convention of
:mod:`seeking.flops`). For a motivated run the FLOPs are
the whole run's, shared by its two models.

The metric is the runs' own (their summaries' ``metric``, a key of :data:`METRICS`): test accuracy
for images; for language models the validation loss (and its perplexity), where the efficiency is
the loss *drop* per TFLOP, ``(Loss_ref - Loss_new) / (FLOPs_new - FLOPs_ref)``, so that positive
means better in both.

Each row also shows what the arm really did: its realised ``p``, how many steps trained the large
model and how many were skipped (non-finite loss or gradient). A model that trained on no step gets
"never trained" in place of an efficiency and a saving: its weights are where it started.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ARMS = (
    ("classical base", "classical_base", "base"),
    ("classical large", "classical_large", "motivated"),
    ("motivated base", "motivated", "base"),
    ("motivated large", "motivated", "motivated"),
    ("random-control base", "random_control", "base"),
    ("random-control large", "random_control", "motivated"),
)


@dataclass(frozen=True)
class Metric:
    """How a comparison reads and shows the models' results."""

    key: str  # in a summary's models
    column: str
    sign: int  # +1: higher is better, -1: lower is better
    efficiency: str  # the column of the metric gained per training TFLOP
    ratio: str  # the efficiency's name in the gain sentence
    extra: tuple[tuple[str, str], ...] = ()  # further (column, key) pairs shown beside it


METRICS = {
    "accuracy": Metric("accuracy", "test acc %", +1, "ACC/FLOPs (pts/TFLOP)", "ACC/FLOPs"),
    "loss": Metric(
        "loss", "val loss", -1, "loss drop/TFLOP", "val-loss drop/FLOPs", extra=(("val ppl", "perplexity"),)
    ),
}


def comparison_columns(metric: str = "accuracy") -> tuple[str, ...]:
    """The columns of a comparison of runs measured by ``metric`` (a key of :data:`METRICS`)."""
    m = METRICS[metric]
    return (
        "arm",
        "model",
        m.column,
        *(column for column, _ in m.extra),
        "train TFLOPs",
        "p",
        "large steps",
        "skipped steps",
        "wall s",
        m.efficiency,
        "FLOPs saving vs large",
    )


COLUMNS = comparison_columns()  # of image runs
EFFICIENCY_COLUMNS = {m.efficiency for m in METRICS.values()}


NEVER_TRAINED = "never trained"


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def trained_steps(summary: dict[str, Any], role: str) -> int:
    """Steps on which the ``role`` model of a run stepped, from its summary (its ``steps_by_model``;
    summaries written before chains have only ``base`` and ``motivated``, counted from ``motivated_steps``)."""
    if "steps_by_model" in summary:
        return summary["steps_by_model"].get(role, 0)
    return summary["motivated_steps"] if role == "motivated" else summary["steps"] - summary["motivated_steps"]


def level_p(summary: dict[str, Any], role: str) -> float:
    """The share of a run's trained steps that trained its ``role`` model (0 before any step): a
    chain's p of that level. ``summary``: ``summary.json`` or a run's counts with its keys."""
    return trained_steps(summary, role) / summary["steps"] if summary["steps"] else 0.0


def p_name(roles: Sequence[str]) -> str:
    """What a run's ``p`` (``summary.json`` ``p``) is called where it is shown: a pair's is the share of
    motivated steps; a chain's (more than two ``roles``) counts the steps of every level above the base,
    so it is named so, beside each level's own share (:func:`level_p`)."""
    return "p above the base" if len(roles) > 2 else "p"


def chain_arms(roles: Sequence[str]) -> list[tuple[str, str, str]]:
    """The (label, folder, role) of each row of a chain's comparison, ``roles`` its levels' roles
    (:func:`~seeking.motivation.chain_roles`): each level's classical twin (the base: ``never``;
    level ``i``: the chain cut at level ``i``, condition ``always``, so it starts from the chain's own
    initialisation of that level), then the chain's every level. The ends keep a pair's labels and folders."""
    tags = {"base": "base", "motivated": "large"}
    classical = [
        (
            f"classical {tags.get(role, role)}",
            f"classical_{tags.get(role, role)}",
            "base" if role == "base" else "motivated",
        )
        for role in roles
    ]
    return [*classical, *((f"motivated {tags.get(role, role)}", "motivated", role) for role in roles)]


def comparison_arms(roles: Sequence[str]) -> Sequence[tuple[str, str, str]]:
    """The (label, folder, role) of each row of a comparison whose motivated run trains the models of
    ``roles``: a pair's :data:`ARMS`, or a chain's levels and twins (:func:`chain_arms`)."""
    return chain_arms(roles) if len(roles) > 2 else ARMS


def paired_arms(labels: Sequence[str]) -> list[tuple[str, str]]:
    """The (arm, reference) pairs among the row labels ``labels`` (``"<arm> <model>"``, :data:`ARMS` or
    :func:`chain_arms`) whose per-seed differences a comparison over seeds shows: each motivated and
    random-control row against its classical twin (of a chain: every level's), then the motivated run
    against the random control on as many large-model steps, model by model."""
    split = [(label, *label.split(" ", 1)) for label in labels]
    twins = [(label, f"classical {model}") for label, arm, model in split if arm != "classical"]
    controls = [(label, f"random-control {model}") for label, arm, model in split if arm == "motivated"]
    return [(arm, reference) for arm, reference in [*twins, *controls] if reference in labels]


def comparison_rows(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm, model) present in ``summaries`` (keyed by arm folder name), its keys the
    columns of the runs' metric (:func:`comparison_columns`). A chain's comparison (a motivated run of
    more than two models) has a row per level and twin (:func:`chain_arms`) and no random control, and
    its rows show their own level's share and count of steps (``level p``, ``level steps``) in place of
    the run's ``p`` and ``large steps``."""
    roles = list(summaries.get("motivated", {}).get("models", {}))
    arms = comparison_arms(roles)
    ref = summaries["classical_base"]
    metric = METRICS[ref.get("metric", "accuracy")]  # summaries before text runs have no "metric"
    ref_acc, ref_flops = ref["models"]["base"][metric.key], ref["train_flops"]
    large_flops = summaries.get("classical_large", {}).get("train_flops")
    rows = []
    for label, arm, role in arms:
        summary = summaries.get(arm)
        if summary is None or role not in summary["models"]:
            continue
        model = summary["models"][role]
        flops = summary["train_flops"]
        if trained_steps(summary, role) == 0:
            efficiency = saving = NEVER_TRAINED
        else:
            gained = metric.sign * (model[metric.key] - ref_acc)
            efficiency = math.nan if arm == "classical_base" else _ratio(gained, (flops - ref_flops) / 1e12)
            saving = _ratio(large_flops, flops) if large_flops else math.nan
        rows.append(
            {
                "arm": label,
                "model": model["model"],
                metric.column: model[metric.key],
                **{column: model[key] for column, key in metric.extra},
                "train TFLOPs": flops / 1e12,
                # a chain's rows: the steps and share of each row's own level, not the run's steps above the base
                **(
                    {"level p": level_p(summary, role), "level steps": trained_steps(summary, role)}
                    if len(roles) > 2
                    else {"p": summary["p"], "large steps": summary["motivated_steps"]}
                ),
                "skipped steps": summary["skipped_steps"],
                "wall s": summary["train_seconds"],
                metric.efficiency: efficiency,
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
    if column in ("train TFLOPs", "p", "level p"):
        return f"{value:.3f}"
    if column == METRICS["loss"].column:
        return f"{value:.4f}"
    if column in EFFICIENCY_COLUMNS:
        return f"{value:+.3g}"
    return f"{value:.2f}" if column != "wall s" else f"{value:.1f}"


def markdown_table(
    rows: list[dict[str, Any]],
    columns: Sequence[str] | None = None,
    cell: Callable[[Any, str], str] = cell_text,
) -> str:
    """A markdown table of ``columns`` (default: the rows' keys), each value written by ``cell(value, column)``."""
    columns = columns or (list(rows[0]) if rows else COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r[c], c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The rows as CSV, with ``columns`` (default: the rows' keys)."""
    columns = columns or (list(rows[0]) if rows else COLUMNS)
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
    column = _efficiency_column(rows)
    by_arm = {r["arm"]: _number(r[column]) for r in rows}
    classical = by_arm.get("classical large", math.nan)
    return _ratio(by_arm.get("motivated large", math.nan), classical) if classical > 0 else math.nan


def _efficiency_column(rows: list[dict[str, Any]]) -> str:
    return next((c for c in rows[0] if c in EFFICIENCY_COLUMNS), COLUMNS[-2]) if rows else COLUMNS[-2]


def _ratio_name(rows: list[dict[str, Any]]) -> str:
    column = _efficiency_column(rows)
    return next(m.ratio for m in METRICS.values() if m.efficiency == column)


def _number(value: float | str) -> float:
    return math.nan if isinstance(value, str) else value


def gain_sentence(rows: list[dict[str, Any]]) -> str:
    """The efficiency gain of ``rows`` as a sentence for the printed and written reports, saying why
    when it is not defined."""
    gain, name = efficiency_gain(rows), _ratio_name(rows)
    if not math.isnan(gain):
        return f"{name} gain of motivation over classical scaling: {gain:.3g}x"
    motivated_large = [r for r in rows if r["arm"] == "motivated large"]
    if motivated_large and motivated_large[0][_efficiency_column(rows)] == NEVER_TRAINED:
        why = "the motivated run never trained its large model"
    else:
        why = "the classical large model did not beat the classical base, so there is no scaling gain to compare with"
    return f"{name} gain of motivation over classical scaling: not defined ({why})"


def chain_sentence(summaries: dict[str, dict[str, Any]]) -> str:
    """What a chain's one run cost against training each of its levels alone ("train once, deploy N"),
    with the steps and share ``p`` of each level, from the arms' summaries (keyed by folder: the
    ``motivated`` arm is the chain, the others its classical twins, :func:`chain_arms`)."""
    chain = summaries["motivated"]
    roles = list(chain["models"])
    twins = [
        summaries[folder]["train_flops"] for _, folder, _ in chain_arms(roles)[: len(roles)] if folder in summaries
    ]
    steps = ", ".join(f"{role} {trained_steps(chain, role)} (p {level_p(chain, role):.3f})" for role in roles)
    flops = chain["train_flops"]
    text = (
        f"Train once, deploy {len(roles)}: the chain trained its {len(roles)} models in {flops / 1e12:.4g} TFLOPs "
        f"(steps by level: {steps})"
    )
    if len(twins) == len(roles):
        text += (
            f"; its {len(roles)} classical twins cost {sum(twins) / 1e12:.4g} TFLOPs together "
            f"({_ratio(sum(twins), flops):.2f}x the chain), the largest alone {twins[-1] / 1e12:.4g} "
            f"({_ratio(twins[-1], flops):.2f}x)"
        )
    return text + "."
