"""Non-finite losses: the step is skipped and counted, the condition never sees it, no NaN reaches
either model, and a run of them stops training with a clear message."""

import json

import pytest
import torch
from helpers import poisoning
from safetensors.torch import load_file

from seeking import SeekingError, TrainConfig, train
from seeking.cli.main import main

FAST = dict(train_subset=128, test_subset=60, epochs=2, batch_size=32, k=1)


def test_a_nan_step_is_skipped_and_reaches_neither_model_nor_the_condition(tmp_path, inject):
    clean = train(TrainConfig(**FAST), tmp_path / "clean", progress=False, log=lambda line: None)
    inject(poisoning({3}))
    run = tmp_path / "poisoned"
    poisoned = train(TrainConfig(**FAST), run, progress=False, log=lambda line: None)
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert steps[3]["skipped"] and steps[3]["loss"] is None
    assert sum("skipped" in s for s in steps) == 1
    summary = poisoned.summary
    assert summary["skipped_steps"] == 1
    assert summary["steps"] == clean.summary["steps"] - 1  # the condition observed one step fewer
    for name in ("base.safetensors", "large.safetensors"):
        weights = load_file(run / name)
        assert all(torch.isfinite(t.float()).all() for t in weights.values())


def test_a_run_of_nan_losses_stops_with_a_clear_message(tmp_path, inject, capsys):
    inject(poisoning(range(1000)))
    with pytest.raises(SeekingError, match="training diverged: 3 non-finite losses or gradients in a row"):
        train(TrainConfig(**FAST, max_nonfinite=3), tmp_path / "run", progress=False, log=lambda line: None)
    argv = ["train", "--train-subset", "128", "--epochs", "1", "--max-nonfinite", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 2
    assert "lower --lr" in capsys.readouterr().err
