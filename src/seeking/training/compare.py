"""``seeking compare``: the paper's comparison in one call.

Arms, all with the same seed, data order and schedule: the classical base (condition ``never``),
the classical large model alone (``always``), the motivated run (the configured condition), and
optionally the random control firing at the p the motivated run measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..errors import ConfigError
from ..io import atomic_write_text, write_json
from ..reporting import comparison_rows, csv_table, efficiency_gain, markdown_table
from ..reporting.comparison import gain_sentence
from ..reporting.report import write_report
from .config import TrainConfig
from .distributed import join
from .flops import FLOPS_CONVENTION
from .loop import check_run, train
from .preflight import claim_run_dir, reports_storage_errors
from .resume import RunInterrupted, StopRequests, mark_complete, resume_command, run_config


@reports_storage_errors
def compare(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    random_control: bool = True,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every arm into ``out_dir/<arm>/``, write ``comparison.{md,csv,json}`` there and the report
    (plots and report.html) into ``out_dir/report/``.

    ``resume=True`` continues an unfinished comparison: finished arms are read back, an unfinished
    one is resumed from its checkpoint, the others are trained."""
    config.validate()
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log or (lambda line: print(line, file=sys.stderr, flush=True)))
    dataset = load_dataset(config.data, cache_dir=config.cache_dir, progress=progress and sys.stderr.isatty())
    check_run(config, dataset, device)
    out = Path(out_dir)
    continue_with = resume_command("compare", out)  # every arm's too: resuming one arm finishes only that one
    if resume:
        if (out / "comparison.json").exists():
            raise ConfigError(f"cannot resume {out}: the comparison is complete (it has comparison.json)")
    else:
        record = run_config("compare", {**config.to_dict(), "random_control": random_control})
        claim_run_dir(out, record, continue_with, ranks)

    def run_arm(arm: str, arm_config: TrainConfig) -> dict[str, Any]:
        folder = out / arm
        if (folder / "summary.json").exists():
            log(f"== arm {arm}: finished before, read from {folder}")
            return json.loads((folder / "summary.json").read_text())
        log(f"== arm {arm}")
        started = resume and folder.exists()
        try:
            run = train(
                arm_config,
                folder,
                resume=started,
                progress=progress,
                log=log,
                dataset=dataset,
                continue_with=continue_with,
            )
        except RunInterrupted as exc:
            raise RunInterrupted(f"{exc.event} of arm {arm}", exc.command) from None
        return run.summary

    arms = [("classical_base", "never"), ("classical_large", "always"), ("motivated", config.condition)]
    with StopRequests():  # a stop asked for during an arm's last step stops the next arm
        summaries = {arm: run_arm(arm, dataclasses.replace(config, condition=condition)) for arm, condition in arms}
        if random_control:
            p = summaries["motivated"]["p"]
            log(f"random control at p = {p:.3f}, as measured in the motivated run")
            control = dataclasses.replace(config, condition="random", p=p)
            summaries["random_control"] = run_arm("random_control", control)
    rows = comparison_rows(summaries)
    table = markdown_table(rows)
    gain = efficiency_gain(rows)
    result = {"config": config.to_dict(), "rows": rows, "efficiency_gain": gain}
    if ranks.main:
        atomic_write_text(out / "comparison.md", table + f"\n\n{gain_sentence(gain)}\n\n{FLOPS_CONVENTION}.\n")
        atomic_write_text(out / "comparison.csv", csv_table(rows))
        write_json(out / "comparison.json", _without_nan(result))
        mark_complete(out)
        write_report([out], out / "report")
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
