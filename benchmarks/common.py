"""What the benchmark scripts share: the data default, the run arguments, mean ± std and the paired
intervals (both from the library's :mod:`seeking.reporting.stats`, the one owner of the statistics)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import scipy.stats

from seeking import TrainConfig
from seeking.reporting.stats import interval_text, mean_interval, paired_interval

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def run_arguments(doc: str, *, epochs: int, train_subset: int, out: str) -> argparse.ArgumentParser:
    """A parser with the options every training benchmark takes; scripts add their own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--train-subset", type=int, default=train_subset)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--out", default=f"runs/{out}-{time.strftime('%Y%m%d-%H%M%S')}")
    return parser


def config_from(args: argparse.Namespace, **fields) -> TrainConfig:
    """The training configuration the run arguments describe; ``fields`` set the rest."""
    return TrainConfig(
        data=args.data,
        k=args.k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        **fields,
    )


def mean_std(values: list[float | None], fmt: str = ".2f") -> str:
    """``mean ± sample std`` of the defined values (± 0 for one); ``-`` if there are none."""
    summary = mean_interval(values)
    if not summary.n:
        return "-"
    return f"{summary.mean:{fmt}} ± {summary.std or 0.0:{fmt.lstrip('+')}}"


def paired_lines(arms: dict[str, dict[int, float]], pairs: Sequence[tuple[str, str]], fmt: str = "+.2f") -> str:
    """One line per ``(arm, reference)`` of ``pairs`` present in ``arms`` (``{arm: {seed: value}}``): the
    mean per-seed difference and its 95% t interval."""
    lines = []
    for arm, reference in pairs:
        if arm in arms and reference in arms:
            interval = paired_interval(arms[arm], arms[reference])
            lines.append(f"{arm} - {reference} (paired by seed, n={interval.n}): {interval_text(interval, fmt)}")
    return "\n".join(lines)


def seeds_table(columns: list[str], arms: dict[str, list[dict]], formats: dict[str, str]) -> str:
    """A markdown table of comparison rows over seeds: per arm (``arms``: its row of each seed), its
    name and model, then each column's mean ± std (``formats``), the median for ``wall s``, and a word
    such as "never trained" with the number of seeds it holds in."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for arm, rows in arms.items():
        cells = [arm, rows[0]["model"]]
        for column in columns[2:]:
            values = [r[column] for r in rows]
            words = {v for v in values if isinstance(v, str)}  # "never trained" in some seed
            if words:
                n = sum(isinstance(v, str) for v in values)
                cells.append(f"{', '.join(sorted(words))} ({n} seed{'s' if n != 1 else ''})")
            elif column == "wall s":
                cells.append(f"{statistics.median(values):.0f}")
            else:
                cells.append(mean_std(values, formats[column]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(per_seed: dict[int, dict[str, dict]], first: str, second: str, column: str = "val loss") -> str:
    """The mean over seeds of ``first - second`` in ``column`` at the same seed, with its 95% t interval."""
    diffs = [rows[first][column] - rows[second][column] for rows in per_seed.values()]
    mean = statistics.fmean(diffs)
    if len(diffs) > 1:
        half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        interval = f"95% CI [{mean - half:+.4f}, {mean + half:+.4f}]"
    else:
        interval = "one seed: no interval"
    shown = ", ".join(f"{d:+.4f}" for d in diffs)
    return f"{first} - {second} ({column}, {len(diffs)} seeds: {shown}): {mean:+.4f}, {interval}"
