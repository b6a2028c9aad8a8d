"""Nothing silent: the random control spends exactly the motivated run's large-model steps; degenerate
options are refused or warned about; a model that never trained and skipped steps show wherever
results are shown."""

import json

import numpy as np
import pytest
from helpers import poisoning
from PIL import Image

from seeking import SeekingError, TrainConfig, train
from seeking.cli.main import main
from seeking.reporting.report import write_report
from seeking.reporting.runs import TrainRun, read_run_folder
from seeking.training import compare as compare_module

FAST = ["--train-subset", "128", "--test-subset", "60", "--batch-size", "32", "--quiet"]  # 4 steps an epoch
QUIET = dict(progress=False, log=lambda line: None)


def steps_of(folder):
    return [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]


def large_steps(folder):
    """Counted from the step log, independently of the summary: steps the large model trained on."""
    return sum(s["model"] == "motivated" and "skipped" not in s for s in steps_of(folder))


def one_class_tree(root):
    for split in ("train", "test"):
        folder = root / split / "cat"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_the_random_control_trains_the_large_model_on_exactly_the_motivated_runs_steps(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--epochs", "2", "--k", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    motivated, control = large_steps(out / "motivated"), large_steps(out / "random_control")
    assert 0 < motivated < 8 and control == motivated
    # ... at other places: the two arms' step logs differ
    assert [s["model"] for s in steps_of(out / "motivated")] != [s["model"] for s in steps_of(out / "random_control")]
    rows = {r["arm"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    for arm, folder in (("motivated large", "motivated"), ("random-control large", "random_control")):
        assert rows[arm]["large steps"] == large_steps(out / folder)
        assert rows[arm]["p"] == pytest.approx(large_steps(out / folder) / 8)  # each arm's realised p
        assert f"| {arm} | resnet32 |" in printed and f"| {rows[arm]['p']:.3f} | {motivated} | 0 |" in printed
    assert rows["classical large"]["large steps"] == 8 and rows["classical base"]["large steps"] == 0


def test_a_large_model_that_never_trained_says_so(tmp_path, capsys):
    # the table's "never trained" cells are checked in test_reporting; here the run's own outputs
    out = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--k", "1000000000", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"seeking: warning: the motivated model resnet32 of {out} was never trained" in captured.err
    assert "p = 0.000 (0/4 steps motivated" in captured.out
    page = (write_report([out], tmp_path / "report").files[-1]).read_text()
    assert "0 (never trained)" in page


def test_a_base_that_never_trained_is_warned_about(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--condition", "random", "--p", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"seeking: warning: the base model resnet20 of {out} was never trained" in captured.err
    assert "p = 1.000 (4/4 steps motivated" in captured.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--condition", "never"], "compare's motivated arm needs a condition that the loss drives"),
        (["compare", "--condition", "always"], "seeking train --condition always"),
        (["compare", "--condition", "random"], "the loss drives (decrease, trend, budget, value), got 'random'"),
        (["compare", "--p", "0.3"], "--condition decrease takes no --p"),
        (
            ["compare", "--condition", "trend", "--p", "0.3"],
            "would do nothing: drop it (in compare it sets the share of budget",
        ),
        (["train", "--pair", "resnet20:resnet32", "--base", "resnet32"], "give the models once: in --pair/--chain"),
        (["train", "--lr", "0"], "lr must be > 0"),
        (["excite", "--lr", "0"], "lr must be > 0"),
        (["train", "--train-subset", "1", "--batch-size", "1"], "the training data hold only label"),
        (["train", "--data", "ONE_CLASS"], "the training data hold only label 0"),
        (["excite", "--data", "ONE_CLASS"], "the training data hold only label 0"),
    ],
)
def test_degenerate_options_are_refused_before_anything_is_written(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEEKING_CACHE_DIR", str(tmp_path / "cache"))
    argv = [str(one_class_tree(tmp_path / "one")) if a == "ONE_CLASS" else a for a in argv]
    out = tmp_path / "run"
    assert main([*argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_pair_and_chain_given_together_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--chain", "resnet20:resnet32", "--pair", "resnet20:resnet56", "--out", str(out)])
    assert exit_.value.code == 2 and "--pair/--chain given twice" in capsys.readouterr().err
    assert not out.exists()


def test_compare_passes_p_to_a_condition_that_takes_it(monkeypatch):
    """budget spends round(p * steps) large-model steps: compare's --p is its share, not refused."""
    given = []

    def reached(config, out, **options):  # stands in for the comparison: what the command line gave it
        given.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "compare", reached)
    assert main(["compare", "--condition", "budget", "--p", "0.3", "--quiet"]) == 130
    assert [(c.condition, c.p) for c in given] == [("budget", 0.3)]


def test_more_examples_than_the_data_holds_is_a_warning(tmp_path, capsys):
    argv = ["train", "--train-subset", "100000", "--test-subset", "5000", "--batch-size", "512", "--epochs", "1"]
    assert main([*argv, "--k", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "seeking: warning: train_subset 100000 is more than the 1437 examples there are: using all 1437" in err
    assert "seeking: warning: test_subset 5000 is more than the 360 examples there are" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2  # 1437 // 512


def test_a_diverged_run_reports_every_skipped_step(tmp_path, inject):
    # steps 5, 6, 7 are non-finite; the third in a row stops the run in epoch 2 (its record never written)
    inject(poisoning({5, 6, 7}))
    config = TrainConfig(train_subset=128, test_subset=60, epochs=2, batch_size=32, k=1, max_nonfinite=3)
    with pytest.raises(SeekingError, match="training diverged"):
        train(config, tmp_path / "run", **QUIET)
    assert sum("skipped" in s for s in steps_of(tmp_path / "run")) == 3  # the stopping step is logged too
    page = (write_report([tmp_path / "run"], tmp_path / "report").files[-1]).read_text()
    assert "3 skipped steps" in page


def test_skipped_steps_show_in_the_printed_results_and_the_logs_agree_with_the_summary(tmp_path, inject, capsys):
    inject(poisoning({2}))
    assert main(["train", *FAST, "--epochs", "2", "--k", "1", "--out", str(tmp_path / "run")]) == 0
    assert "1 skipped step," in capsys.readouterr().out
    run = read_run_folder(tmp_path / "run")
    from_log = TrainRun(run.path, run.config, run.steps, run.epochs, None).counts  # as for an unfinished run
    assert from_log == run.counts == {k: run.summary[k] for k in from_log}
    assert from_log["skipped_steps"] == 1 and from_log["switches"] > 0
    inject.undo()
    inject(poisoning({2}))  # the third step
    argv = ["excite", "--steps", "6", "--eval-every-steps", "6", "--batch-size", "64", "--seeds", "0", "--arms", "none"]
    assert main([*argv, "--quiet", "--out", str(tmp_path / "exc")]) == 0
    table = capsys.readouterr().out
    assert "| arm | seeds | skipped steps |" in table and "| plain optimizer | 1 | 1 |" in table
