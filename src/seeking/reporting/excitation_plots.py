"""The report's pictures of an Excitation experiment (the ``excitation.json`` of ``seeking excite``).

Curves are per arm: the mean over seeds, with the range over seeds shaded. Utilization and the
factors Phi are shown for one seed (the first), as recorded at each evaluation: utilization from
the last test batch (as the other routing metrics), Phi from the last training step before it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from ..wording import counted
from .excitation import BASELINE, arm_label
from .plots import new_figure

METRICS = {"test acc %": ("Test accuracy", "accuracy (%)"), "val loss": ("Validation loss", "cross-entropy (nats)")}
CURVES = (  # (key, title, y label); the key None is the task's metric
    ("train_loss", "Training loss (mean over the steps since the previous test)", "cross-entropy (nats)"),
    (None, "", ""),
    ("dead_fraction", "Dead experts (no token in the last test batch)", "fraction of the experts"),
    ("load_entropy", "Routing entropy of the experts' loads", "entropy (nats)"),
)


def _by_arm(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for run in result["runs"]:
        arms.setdefault(run["arm"], []).append(run)
    return arms


def first_seed_runs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm, the run of the first seed."""
    seed = result["runs"][0]["seed"]
    return {run["arm"]: run for run in result["runs"] if run["seed"] == seed}


def curves_figure(result: dict[str, Any]) -> Figure:
    """Training loss, the task metric, dead-expert fraction and routing entropy against the step."""
    figure = new_figure(10.0, 7.0)
    axes = figure.subplots(2, 2, sharex=True).flatten()
    metric = result["metric"]
    for color, (arm, runs) in enumerate(_by_arm(result).items()):
        steps = [c["step"] for c in runs[0]["curve"]]
        for ax, (key, _, _) in zip(axes, CURVES, strict=True):
            values = np.array([[c.get(key or metric, math.nan) for c in run["curve"]] for run in runs], dtype=float)
            ax.plot(steps, values.mean(0), color=f"C{color}", label=f"{arm_label(arm)} ({counted(len(runs), 'seed')})")
            if len(runs) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=f"C{color}", alpha=0.2, linewidth=0)
    for ax, (_, title, label) in zip(axes, CURVES, strict=True):
        ax.set_title(title or METRICS.get(metric, (metric, ""))[0], fontsize="medium")
        ax.set_ylabel(label or METRICS.get(metric, ("", metric))[1])
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize="small")
    config = result.get("config", {})
    figure.suptitle(
        f"{config.get('model', '')} with {config.get('optimizer', '')} (lr {config.get('lr', '')}): "
        + ("mean over seeds, range shaded" if len(result["runs"]) > len(_by_arm(result)) else "one seed")
    )
    return figure


def utilization_figure(result: dict[str, Any]) -> Figure | None:
    """Heatmaps of each expert's utilization over time, a row per arm and a column per MoE layer."""
    runs = first_seed_runs(result)
    if not all("utilization" in c for run in runs.values() for c in run["curve"]):
        return None  # recorded before per-layer utilization was logged
    layers = len(next(iter(runs.values()))["curve"][0]["utilization"])
    figure = new_figure(2.6 * layers + 1.2, 1.9 * len(runs) + 0.8)
    axes = figure.subplots(len(runs), layers, sharex=True, squeeze=False)
    top = max(max(max(u) for u in c["utilization"]) for run in runs.values() for c in run["curve"])
    cmap = colormaps["viridis"].with_extremes(bad="0.85")  # grey: a dead expert (no token)
    norm = PowerNorm(0.5, vmin=0, vmax=max(top, 1.0))
    mesh = None
    for row, (arm, run) in enumerate(runs.items()):
        edges = [0, *(c["step"] for c in run["curve"])]
        for layer in range(layers):
            matrix = np.array([c["utilization"][layer] for c in run["curve"]]).T  # (experts, evaluations)
            matrix = matrix[np.argsort(-matrix.mean(1), kind="stable")]
            ax = axes[row, layer]
            mesh = ax.pcolormesh(edges, np.arange(len(matrix) + 1), np.ma.masked_equal(matrix, 0), cmap=cmap, norm=norm)
            ax.invert_yaxis()
            ax.set_title(f"{arm_label(arm)}, layer {layer}", fontsize="small")
            if layer == 0:
                ax.set_ylabel("expert (busiest on top)", fontsize="small")
            if row == len(runs) - 1:
                ax.set_xlabel("training step", fontsize="small")
    figure.colorbar(mesh, ax=axes, label="utilization (tokens / fair share; grey: dead)", shrink=0.8)
    figure.suptitle(f"Expert utilization at each test (seed {next(iter(runs.values()))['seed']})")
    return figure


def phi_figure(result: dict[str, Any]) -> Figure | None:
    """Per Excitation arm, the spread of Phi over all experts of all layers at each test."""
    runs = {arm: run for arm, run in first_seed_runs(result).items() if arm != BASELINE}
    if not runs or not all(c.get("phi") for run in runs.values() for c in run["curve"]):
        return None  # no Excitation arm, or recorded before Phi was logged
    figure = new_figure(3.6 * len(runs) + 0.6, 4.2)
    axes = figure.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, (arm, run) in zip(axes, runs.items(), strict=True):
        steps = [c["step"] for c in run["curve"]]
        phi = [np.concatenate([np.asarray(f, dtype=float) for f in c["phi"]]) for c in run["curve"]]
        low, q10, median, q90, high = np.array([np.quantile(f, [0, 0.1, 0.5, 0.9, 1]) for f in phi]).T
        ax.fill_between(steps, low, high, color="tab:purple", alpha=0.15, linewidth=0, label="min to max")
        ax.fill_between(steps, q10, q90, color="tab:purple", alpha=0.35, linewidth=0, label="10% to 90%")
        ax.plot(steps, median, color="tab:purple", label="median")
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8, label="1 (plain step)")
        ax.set_title(arm_label(arm), fontsize="small")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Phi: multiplier of an expert's step")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize="small")
    figure.suptitle(f"Excitation factors over the experts of all layers (seed {next(iter(runs.values()))['seed']})")
    return figure
