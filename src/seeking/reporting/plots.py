"""The report's pictures of training runs: the loss with motivated episodes, accuracy per epoch,
accuracy against training cost.

Figures use matplotlib's object API (no pyplot): nothing of the caller's backend or global state is
touched, and ``png_bytes`` renders with Agg. Runs are passed as ``{arm folder: run}`` (the arm
``""`` for a lone run): the arm sets the line style, the model's role the colour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..flops import FLOPS_CONVENTION
from .runs import TrainRun

ROLE_COLORS = {"base": "tab:blue", "motivated": "tab:orange"}
ROLE_NAMES = {"base": "base", "motivated": "large"}
ARM_STYLES = {"classical_base": "--", "classical_large": "--", "random_control": ":"}
EPISODE_COLOR = "tab:orange"
FLOP_UNITS = ((1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1, "FLOPs"))


def new_figure(width: float = 8.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def motivated_spans(models: Sequence[str]) -> list[tuple[int, int]]:
    """``(first step, length)`` of each run of consecutive ``"motivated"`` entries: the episodes."""
    spans: list[tuple[int, int]] = []
    for i, model in enumerate(models):
        if model != "motivated":
            continue
        if spans and sum(spans[-1]) == i:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((i, 1))
    return spans


def epoch_p(steps: Sequence[dict]) -> list[tuple[int, int, float]]:
    """Per epoch: first step, number of steps, fraction of its trained steps on the motivated model."""
    out = []
    for epoch in dict.fromkeys(s["epoch"] for s in steps):
        mine = [s for s in steps if s["epoch"] == epoch]
        trained = [s for s in mine if "skipped" not in s]
        p = sum(s["model"] == "motivated" for s in trained) / len(trained) if trained else 0.0
        out.append((mine[0]["step"], len(mine), p))
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` points, ignoring NaN (a skipped step); NaN where all are NaN."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    index = np.arange(len(values))
    lo, hi = np.clip(index - window // 2, 0, None), np.clip(index + window // 2 + 1, None, len(values))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[hi] - sums[lo]) / (counts[hi] - counts[lo])


def loss_figure(run: TrainRun, title: str) -> Figure:
    """Loss per step, motivated episodes shaded; below it (runs of two models) p per epoch."""
    two_models = len(run.model_names) == 2
    figure = new_figure(8.0, 5.5 if two_models else 4.0)
    axes = figure.subplots(
        2 if two_models else 1, 1, sharex=True, squeeze=False, height_ratios=[3, 1][: 1 + two_models]
    )
    ax = axes[0, 0]
    step = np.array([s["step"] for s in run.steps])
    loss = np.array([np.nan if s["loss"] is None else s["loss"] for s in run.steps], dtype=float)
    window = max(1, round(len(loss) / 50))
    ax.plot(step, loss, color="tab:blue", alpha=0.35 if window > 1 else 1.0, linewidth=0.7, label="loss of each step")
    if window > 1:
        ax.plot(step, moving_average(loss, window), color="navy", linewidth=1.4, label=f"mean of {window} steps")
    if two_models:
        spans = [(step[i] - 0.5, n) for i, n in motivated_spans([s["model"] for s in run.steps])]
        ax.broken_barh(spans, (0, 1), transform=ax.get_xaxis_transform(), color=EPISODE_COLOR, alpha=0.2)
    skipped = [s["step"] for s in run.steps if "skipped" in s]
    if skipped:
        ax.vlines(skipped, 0, 1, transform=ax.get_xaxis_transform(), color="tab:red", label="skipped (non-finite)")
    handles, _ = ax.get_legend_handles_labels()
    if two_models:
        handles.append(Patch(color=EPISODE_COLOR, alpha=0.2, label="motivated model steps"))
    ax.legend(handles=handles, loc="upper right", fontsize="small")
    ax.set_ylabel("training cross-entropy (nats)")
    ax.set_title(title)
    if two_models:
        ax = axes[1, 0]
        for first, count, p in epoch_p(run.steps):
            ax.bar(first - 0.5, p, width=count, align="edge", color=EPISODE_COLOR, alpha=0.6, edgecolor="white")
        ax.set_ylim(0, 1)
        ax.set_ylabel("p")
        ax.set_title("p per epoch: the fraction of its steps that trained the motivated model", fontsize="small")
    axes[-1, 0].set_xlabel("training step")
    return figure


def _lines(ax, runs: dict[str, TrainRun], x_key: str, x_scale: float = 1.0) -> None:
    """One line per (arm, model) of test accuracy against the epoch record's ``x_key`` / ``x_scale``."""
    for arm, run in runs.items():
        for role, model in run.model_names.items():
            points = [(e[x_key] / x_scale, e[f"{role}_accuracy"]) for e in run.epochs if f"{role}_accuracy" in e]
            if not points:
                continue
            label = f"{arm.replace('_', ' ')}: " * bool(arm) + f"{ROLE_NAMES.get(role, role)} ({model})"
            x, y = zip(*points, strict=True)
            style = ARM_STYLES.get(arm, "--" if arm.startswith("classical") else "-")  # a chain's classical_level<i>
            color = ROLE_COLORS.get(role, "tab:green")  # a chain's intermediate levels
            ax.plot(x, y, style, marker="o", markersize=3, color=color, label=label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.has_data():  # beside the plot: lines of several arms fill any corner
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")


def accuracy_figure(runs: dict[str, TrainRun], title: str) -> Figure:
    figure = new_figure(10.0)
    ax = figure.subplots()
    _lines(ax, runs, "epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_title(title)
    return figure


def cost_figure(runs: dict[str, TrainRun], title: str) -> Figure:
    figure = new_figure(10.0)
    ax = figure.subplots()
    most = max((e["flops"] for run in runs.values() for e in run.epochs), default=1)
    scale, unit = next((s, u) for s, u in FLOP_UNITS if most >= s or s == 1)
    _lines(ax, runs, "flops", scale)
    ax.set_xlabel(f"cumulative training {unit} of the run ({FLOPS_CONVENTION})", fontsize="small")
    ax.set_title(title)
    return figure
