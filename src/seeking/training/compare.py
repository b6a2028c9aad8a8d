"""``seeking compare``: the paper's comparison in one call.

Arms, all with the same seed, data order and schedule: the classical base (condition ``never``),
the classical large model alone (``always``), the motivated run (the configured condition), and
optionally the random control firing at the p the motivated run measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..io import atomic_write_text, write_json
from ..reporting import comparison_rows, csv_table, efficiency_gain, markdown_table
from ..reporting.comparison import gain_sentence
from .config import TrainConfig
from .loop import check_pair, prepare_run_dir, train


def compare(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    random_control: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every arm into ``out_dir/<arm>/`` and write ``comparison.{md,csv,json}`` there."""
    config.validate()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    dataset = load_dataset(config.data, cache_dir=config.cache_dir, progress=progress and sys.stderr.isatty())
    check_pair(config, dataset)
    out = prepare_run_dir(out_dir)
    arms = [("classical_base", "never"), ("classical_large", "always"), ("motivated", config.condition)]
    summaries: dict[str, dict[str, Any]] = {}
    for arm, condition in arms:
        log(f"== arm {arm}")
        arm_config = dataclasses.replace(config, condition=condition)
        summaries[arm] = train(arm_config, out / arm, progress=progress, log=log, dataset=dataset).summary
    if random_control:
        p = summaries["motivated"]["p"]
        log(f"== arm random_control (p = {p:.3f}, as measured in the motivated run)")
        arm_config = dataclasses.replace(config, condition="random", p=p)
        summaries["random_control"] = train(
            arm_config, out / "random_control", progress=progress, log=log, dataset=dataset
        ).summary
    rows = comparison_rows(summaries)
    table = markdown_table(rows)
    gain = efficiency_gain(rows)
    atomic_write_text(Path(out) / "comparison.md", table + f"\n\n{gain_sentence(gain)}\n")
    atomic_write_text(Path(out) / "comparison.csv", csv_table(rows))
    result = {"config": config.to_dict(), "rows": rows, "efficiency_gain": gain}
    write_json(Path(out) / "comparison.json", _without_nan(result))
    return result


def _without_nan(value: Any) -> Any:
    """JSON has no NaN: undefined ratios become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value
