"""``seeking compare``: the paper's comparison in one call.

Arms, all with the same seed, data order and schedule: the classical base (condition ``never``),
the classical large model alone (``always``), the motivated run (the configured condition, one the
loss drives), and optionally the random control: exactly as many large-model steps as the motivated
run took, at random positions (:class:`~seeking.motivation.RandomPlacement`). For a chain
(``intermediate`` models): a classical twin of every level and the chain's run (no random control).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SeekingWarning
from ..flops import FLOPS_CONVENTION
from ..io import atomic_write_text, write_json
from ..motivation import CONDITIONS, RandomPlacement, chain_roles, classical_condition
from ..reporting import comparison_rows, csv_table, efficiency_gain, markdown_table
from ..reporting.comparison import chain_arms, chain_sentence, gain_sentence
from ..reporting.report import write_report
from ..runs import (
    COMPARISON_CSV,
    COMPARISON_JSON,
    COMPARISON_MD,
    REPORT,
    SUMMARY,
    mark_complete,
    open_run_dir,
    resume_command,
    run_config,
)
from .checkpoint import RunInterrupted, StopRequests
from .config import TrainConfig
from .distributed import join
from .loop import check_run, train
from .preflight import reports_storage_errors
from .tasks import preload_data


@reports_storage_errors
def compare(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    random_control: bool = True,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Train every arm into ``out_dir/<arm>/``, write ``comparison.{md,csv,json}`` there and the report
    (plots and report.html; unless not ``report``: a sweep's cells) into ``out_dir/report/``.

    ``config.condition`` must be one the loss drives (``decrease``): the classical arms are already
    in the comparison and the control's count comes from the motivated run, so ``config.p`` is not
    used. ``resume=True`` continues an unfinished comparison: finished arms are read back, an
    unfinished one is resumed from its checkpoint, the others are trained. Raises ``ConfigError``."""
    config.validate()
    if not CONDITIONS[config.condition].reads_loss:
        loss_driven = ", ".join(name for name, kind in CONDITIONS.items() if kind.reads_loss)
        raise ConfigError(
            f"compare's motivated arm needs a condition that the loss drives ({loss_driven}), got "
            f"{config.condition!r}: the classical arms and the random control are already part of the "
            f"comparison; for a single {config.condition!r} run use seeking train --condition {config.condition}"
        )
    ranks, device = join(config.device, config.batch_size)
    log = ranks.speaker(log or (lambda line: print(line, file=sys.stderr, flush=True)))
    dataset = preload_data(config, progress=progress and sys.stderr.isatty())  # None for text
    check_run(config, dataset, device)
    if not resume:
        config.warn_unused()  # once, for the comparison: each arm's own condition leaves some options to the others
    out = Path(out_dir)
    continue_with = resume_command("compare", out)  # every arm's too: resuming one arm finishes only that one
    record = run_config("compare", {**config.to_dict(), "random_control": random_control})
    open_run_dir("compare", out, record, continue_with, resume=resume, ranks=ranks)

    def run_arm(arm: str, arm_config: TrainConfig) -> dict[str, Any]:
        folder = out / arm
        if (folder / SUMMARY).exists():
            log(f"== arm {arm}: finished before, read from {folder}")
            return json.loads((folder / SUMMARY).read_text())
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
                warn_unused=False,
            )
        except RunInterrupted as exc:
            raise RunInterrupted(f"{exc.event} of arm {arm}", exc.command) from None
        return run.summary

    arms = [*classical_twins(config), ("motivated", config)]
    if random_control and config.intermediate:
        warnings.warn(
            "the random control is not built for chains (it places one exact count among a run's steps; a chain's "
            "pairs see only their own steps): the comparison has the classical twins and the chain only",
            SeekingWarning,
            stacklevel=2,
        )
        random_control = False
    with StopRequests():  # a stop asked for during an arm's last step stops the next arm
        summaries = {arm: run_arm(arm, arm_config) for arm, arm_config in arms}
        if random_control:
            motivated = summaries["motivated"]
            count, total = motivated["motivated_steps"], motivated["steps"] + motivated["skipped_steps"]
            log(
                f"random control: the large model trains on {count} of {total} steps at random, as in the motivated run"
            )
            # round(p * total) == count: the control spends exactly the motivated run's large-model steps
            control = dataclasses.replace(config, condition=RandomPlacement.name, p=count / total)
            summaries["random_control"] = run_arm("random_control", control)
    if random_control and summaries["random_control"]["motivated_steps"] != count:  # it skipped non-finite steps
        warnings.warn(
            f"the random control trained the large model on {summaries['random_control']['motivated_steps']} "
            f"steps, the motivated run on {count}: the control skipped "
            f"{summaries['random_control']['skipped_steps']} non-finite steps, so the arms' costs differ",
            SeekingWarning,
            stacklevel=2,
        )
    rows = comparison_rows(summaries)
    table = markdown_table(rows)
    result = {"config": config.to_dict(), "rows": rows, "efficiency_gain": efficiency_gain(rows)}
    sentences = gain_sentence(rows)
    if config.intermediate:  # a chain: its one run against training every level alone
        result["chain"] = chain_sentence(summaries)
        sentences += f"\n\n{result['chain']}"
    if ranks.main:
        atomic_write_text(out / COMPARISON_MD, table + f"\n\n{sentences}\n\n{FLOPS_CONVENTION}.\n")
        atomic_write_text(out / COMPARISON_CSV, csv_table(rows))
        write_json(out / COMPARISON_JSON, _without_nan(result))
        mark_complete(out)
        if report:
            write_report([out], out / REPORT)
    return result


def classical_twins(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """The classical arms, by folder: the base alone (``never``) and each larger model alone (``always``):
    a pair's large model, or each level ``i`` of a chain as the chain cut at level ``i``, so that each
    twin is seeded as that level of the chain (:func:`~seeking.training.loop.build_models`)."""
    chain = [config.base, *config.intermediate, config.motivated]
    never, always = classical_condition("base"), classical_condition("motivated")
    folders = [folder for _, folder, _ in chain_arms(chain_roles(len(chain)))[: len(chain)]]
    twins = [
        dataclasses.replace(config, intermediate=chain[1:level], motivated=chain[level], condition=always)
        for level in range(1, len(chain))
    ]
    return list(zip(folders, [dataclasses.replace(config, condition=never), *twins], strict=True))


def _without_nan(value: Any) -> Any:
    """JSON has no NaN: undefined ratios become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value
