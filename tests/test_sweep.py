"""`seeking sweep`: each arm at its own best setting chosen on held-out training images, the usable
learning-rate range, paired intervals, and a sweep that continues where it stopped."""

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch
from scipy import stats

from seeking.cli.main import main
from seeking.data import load_dataset
from seeking.data.core import holdout_split, run_splits
from seeking.errors import ConfigError, SeekingWarning
from seeking.reporting.plots import png_bytes
from seeking.reporting.stats import mean_interval
from seeking.reporting.sweep import Cell, choose, curve_figure, lr_curve, usable_range
from seeking.training.config import ExciteConfig, TrainConfig
from seeking.training.sweep import SWEEP_KINDS, sweep

pytestmark = pytest.mark.usefixtures("one_thread")
EXCITE = dict(steps=4, eval_every_steps=4, batch_size=64, holdout=150, arms=["none", "zero_sum"], seeds=[0, 1])


def test_the_holdout_is_the_same_for_every_seed_and_never_trained_on():
    digits = load_dataset("digits", progress=False)
    rest, held = holdout_split(digits.train, 100)
    assert len(held) == 100 and len(rest) == len(digits.train) - 100
    assert torch.bincount(held.labels).tolist() == [10] * 10  # class-stratified
    for seed in (0, 3):
        train, test = run_splits(digits, 500, None, 32, seed, holdout=100)
        assert torch.equal(test.images, held.images)  # tested on the held-out images, not the test set
        trained = {bytes(x.numpy()) for x in train.images}
        assert not trained & {bytes(x.numpy()) for x in held.images}
    with pytest.raises(ConfigError, match="lower --holdout"):
        holdout_split(digits.train, len(digits.train))


def _cells(means: dict[float, float]) -> list[Cell]:
    return [
        Cell({"lr": lr, "momentum": 0.0}, seed, {"a": m + (seed - 0.5)}) for lr, m in means.items() for seed in (0, 1)
    ]


def test_the_usable_range_is_the_contiguous_run_within_tolerance_of_the_best():
    cells = _cells({0.01: 20.0, 0.03: 49.0, 0.1: 50.0, 0.3: 48.5, 1.0: 30.0, 3.0: 49.5})
    chosen = choose(cells, "a", +1)
    assert chosen == {"lr": 0.1, "momentum": 0.0}
    usable = usable_range(lr_curve(cells, "a", chosen, 0.1), +1, within=2.0)
    # 3.0 is within 2 points too, but past the gap at 1.0: not part of the range
    assert (usable.low, usable.high, usable.at_low_end, usable.at_high_end) == (0.03, 0.3, False, False)
    assert usable.decades == pytest.approx(1.0)
    edge = usable_range(lr_curve(cells, "a", chosen, 0.1), +1, within=40.0)
    assert edge.at_low_end and edge.at_high_end and "at least" in edge.text()
    # a tie goes to the first setting in grid order
    assert choose(_cells({0.1: 50.0, 0.3: 50.0}), "a", +1)["lr"] == 0.1


def test_the_lr_axis_labels_the_swept_learning_rates_alone():
    """Log-scale minor labels (3x10^-2 beside 4x10^-2) overlap: the swept values, of every arm, are the labels."""
    curves = {
        "a": [(lr, mean_interval([50.0, 52.0])) for lr in (0.025, 0.05, 0.1)],
        "b": [(lr, mean_interval([40.0])) for lr in (0.05, 0.1, 0.4)],  # 0.025 diverged: not on its curve
    }
    figure = curve_figure(curves, "acc %", "a sweep")
    png_bytes(figure)  # drawn, as the sweep writes it: the labels are set
    ax = figure.axes[0]
    assert list(ax.get_xticks()) == [0.025, 0.05, 0.1, 0.4]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["0.025", "0.05", "0.1", "0.4"]
    assert all(label.get_text() == "" for label in ax.get_xticklabels(minor=True))


def test_an_excite_sweep_chooses_on_validation_tests_on_test_and_continues(tmp_path):
    config = ExciteConfig(**EXCITE).validate()
    lines = []
    result = sweep("excite", config, {"lr": [0.03, 0.3]}, [0, 1], tmp_path, progress=False, log=lines.append)
    # the choice, recomputed from the selection cells' own result files
    for row in result["rows"]:
        arm = {"plain optimizer": "none", "excitation zero_sum": "zero_sum"}[row["arm"]]
        means = {}
        for lr in (0.03, 0.3):
            cells = [tmp_path / f"select/lr={lr}/{row['arm'].replace(' ', '_')}/seed{s}" for s in (0, 1)]
            runs = [json.loads((cell / "excitation.json").read_text()) for cell in cells]
            assert all(r["config"]["holdout"] == 150 for r in runs)
            means[lr] = statistics.fmean(run[r"test acc %"] for r in runs for run in r["runs"] if run["arm"] == arm)
        best = max(means, key=means.get)
        assert row["chosen setting"] == f"lr={best}" and row["validation"] == pytest.approx(means[best])
        tests = [
            json.loads(
                (tmp_path / f"test/lr={best}/{row['arm'].replace(' ', '_')}/seed{s}/excitation.json").read_text()
            )
            for s in (0, 1)
        ]
        assert all(t["config"]["holdout"] is None and t["config"]["arms"] == [arm] for t in tests)
        values = [t["runs"][0]["test acc %"] for t in tests]
        interval = mean_interval(values)
        assert row["test"] == pytest.approx(statistics.fmean(values)) and row["test ci low"] == interval.low
    tested = result["tested"]
    seeds = sorted(tested["plain optimizer"])
    reference = stats.ttest_rel(
        [tested["excitation zero_sum"][s] for s in seeds], [tested["plain optimizer"][s] for s in seeds]
    )
    (paired,) = result["paired"]
    if math.isfinite(reference.statistic):
        ci = reference.confidence_interval(0.95)
        assert (paired["difference ci low"], paired["difference ci high"]) == (
            pytest.approx(ci.low),
            pytest.approx(ci.high),
        )
    assert paired["difference n"] == 2
    assert (tmp_path / "sweep_lr.png").read_bytes().startswith(b"\x89PNG")
    assert "paired by seed, 95% CI" in (tmp_path / "sweep.md").read_text()
    # again: every cell is read back, nothing trains, the same result
    lines.clear()
    again = sweep("excite", config, {"lr": [0.03, 0.3]}, [0, 1], tmp_path, progress=False, log=lines.append)
    assert again["rows"] == result["rows"] and all("finished before" in line for line in lines if "== cell" in line)
    assert not any(re.search(r"step \d+/\d+", line) for line in lines)  # no training step
    # a cell that was run with other options is refused, naming it
    with pytest.raises(ConfigError, match="other options"):
        sweep(
            "excite",
            ExciteConfig(**{**EXCITE, "gamma": 2.0}),
            {"lr": [0.03]},
            [0],
            tmp_path,
            progress=False,
            log=lines.append,
        )


def test_a_compare_sweep_pairs_each_arm_with_its_classical_twin_and_one_seed_has_no_interval(tmp_path):
    # one setting and no holdout: nothing to choose, every arm is tested at once (the multi-seed compare)
    config = TrainConfig(train_subset=64, test_subset=30, epochs=1, batch_size=32, k=1, bn_recalibrate=0)
    result = sweep("compare", config, {}, [3], tmp_path, progress=False, log=lambda line: None)
    assert not (tmp_path / "select").exists() and result["rows"][0]["chosen setting"] == "default"
    pairs = {(r["arm"], r["reference"]): r for r in result["paired"]}
    assert ("motivated base", "classical base") in pairs and ("motivated large", "random-control large") in pairs
    acc = {
        r["arm"]: r["test acc %"]
        for r in json.loads((tmp_path / "test/default/seed3/comparison.json").read_text())["rows"]
    }
    assert result["tested"]["motivated base"] == {3: acc["motivated base"]}
    row = pairs[("motivated base", "classical base")]
    assert row["difference"] == acc["motivated base"] - acc["classical base"]
    assert (row["difference n"], row["difference ci low"], row["difference ci high"]) == (1, None, None)
    assert "n=1: no interval" in result["table"]
    assert "usable lr low" not in result["rows"][0] and "validation" not in result["rows"][0]  # nothing chosen


def test_a_compare_sweep_of_a_chain_pairs_every_level_with_its_classical_twin(tmp_path):
    chain = dict(base="resnet20", intermediate=["resnet32"], motivated="resnet44")
    config = TrainConfig(**chain, train_subset=32, test_subset=20, epochs=1, batch_size=32, k=1, bn_recalibrate=0)
    with pytest.warns(SeekingWarning, match="random control is not built for chains"):
        result = sweep("compare", config, {}, [0], tmp_path, progress=False, log=lambda line: None)
    levels = ("base", "level1", "large")
    pairs = {(r["arm"], r["reference"]): r["difference"] for r in result["paired"]}
    assert list(pairs) == [(f"motivated {level}", f"classical {level}") for level in levels]
    rows = json.loads((tmp_path / "test/default/seed0/comparison.json").read_text())["rows"]
    acc = {r["arm"]: r["test acc %"] for r in rows}
    for level in levels:
        assert (
            pairs[(f"motivated {level}", f"classical {level}")] == acc[f"motivated {level}"] - acc[f"classical {level}"]
        )
    assert "| motivated level1 | classical level1 |" in result["table"]
    # a diverged cell of a chain counts for the chain's arms, not a pair's
    assert list(SWEEP_KINDS["compare"].diverged(config)) == [r["arm"] for r in rows]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["excite", "--grid", "lr=0.1,0.3"], "--holdout"),
        (["excite", "--holdout", "50", "--grid", "seeds=1,2"], "cannot be swept"),
        (["excite", "--holdout", "50", "--grid", "lr=0.1,x"], "not a list of float"),
        (["excite", "--holdout", "50", "--grid", "lr=0.1,0.1"], "distinct"),
        (["excite", "--holdout", "50", "--grid", "lr=-1"], "lr must be > 0"),
        (["compare", "--holdout", "50", "--seed", "3"], "drop --seed"),
        (["compare", "--p", "0.3"], "--condition decrease takes no --p"),  # as seeking compare refuses it
        # an option given directly and as a grid axis: the grid would replace it without a word
        (["compare", "--holdout", "50", "--grid", "lr=0.05,0.1", "--lr", "0.2"], "--lr 0.2 is also swept by --grid"),
        (["excite", "--holdout", "50", "--steps", "7", "--grid", "steps=4,8"], "drop --steps or --grid steps"),
        (
            ["compare", "--holdout", "50", "--pair", "resnet20:resnet44", "--grid", "motivated=resnet32,resnet56"],
            "--pair/--chain",
        ),
        # --pair gives base even at its default (resnet20)
        (["compare", "--holdout", "50", "--pair", "resnet20:resnet56", "--grid", "base=resnet20,resnet32"], "--pair"),
        # a second --grid of one option would replace the first's values
        (["excite", "--holdout", "50", "--grid", "lr=0.05", "--grid", "lr=0.1"], "--grid lr given more than once"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_run_folder_is_refused_as_the_out_of_a_sweep(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # what seeking train, compare and excite write first
    assert main(["sweep", "excite", "--out", str(run), "--quiet"]) == 2
    assert "is the run folder of a seeking train" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_a_text_file_is_refused(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc " * 500)
    argv = [
        "sweep",
        "excite",
        "--data",
        str(text),
        "--model",
        "gpt_moe_tiny",
        "--holdout",
        "5",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2 and "image data" in capsys.readouterr().err


def test_a_diverging_cell_is_a_result_never_chosen_and_read_back(tmp_path):
    config = ExciteConfig(**{**EXCITE, "seeds": [0], "max_nonfinite": 1})
    lines = []
    result = sweep("excite", config, {"lr": [0.1, 1e6]}, [0], tmp_path, progress=False, log=lines.append)
    assert all(row["chosen setting"] == "lr=0.1" for row in result["rows"])
    assert {Path(p).parent.name for p in result["diverged"]} == {"plain_optimizer", "excitation_zero_sum"}
    assert "diverged" in (tmp_path / "select/lr=1000000.0/plain_optimizer/seed0/DIVERGED").read_text()
    # no usable learning rate above 0.1: the diverged one ends the range (which reaches the low end)
    assert all(row["usable lr high"] == 0.1 and row["usable lr decades"] == 0 for row in result["rows"])
    lines.clear()
    again = sweep("excite", config, {"lr": [0.1, 1e6]}, [0], tmp_path, progress=False, log=lines.append)
    assert again["rows"] == result["rows"] and not any(re.search(r"step \d+/\d+", line) for line in lines)
