"""The comparison table's numbers: ACC/FLOPs against the classical base, the efficiency gain."""

import math

import pytest

from seeking.errors import RunFolderError
from seeking.reporting import comparison_rows, efficiency_gain, markdown_table
from seeking.reporting.comparison import gain_sentence
from seeking.reporting.runs import TrainRun


def summary(base_acc=None, large_acc=None, flops=1e12, p=0.0, skipped=0):
    models = {}
    if base_acc is not None:
        models["base"] = {"model": "b", "accuracy": base_acc}
    if large_acc is not None:
        models["motivated"] = {"model": "m", "accuracy": large_acc}
    steps = 100
    return {
        "models": models,
        "train_flops": flops,
        "p": p,
        "steps": steps,
        "motivated_steps": round(p * steps),
        "skipped_steps": skipped,
        "train_seconds": 1.0,
    }


def rows(classical_large_acc, motivated_large_acc):
    return comparison_rows(
        {
            "classical_base": summary(base_acc=60.0, flops=1e12),
            "classical_large": summary(large_acc=classical_large_acc, flops=3e12, p=1.0),
            "motivated": summary(base_acc=61.0, large_acc=motivated_large_acc, flops=1.5e12, p=0.2),
        }
    )


def test_acc_per_flops_and_savings_against_the_references():
    table = {r["arm"]: r for r in rows(66.0, 63.0)}
    assert math.isnan(table["classical base"]["ACC/FLOPs (pts/TFLOP)"])
    assert table["classical large"]["ACC/FLOPs (pts/TFLOP)"] == pytest.approx(6.0 / 2.0)
    assert table["motivated large"]["ACC/FLOPs (pts/TFLOP)"] == pytest.approx(3.0 / 0.5)
    assert table["motivated base"]["FLOPs saving vs large"] == pytest.approx(2.0)
    assert efficiency_gain(list(table.values())) == pytest.approx(2.0)


def test_efficiency_gain_is_undefined_when_classical_scaling_gains_nothing():
    # both large models worse than the base: two negative slopes must not read as a 30x "gain"
    assert math.isnan(efficiency_gain(rows(55.0, 40.0)))
    assert math.isnan(efficiency_gain(rows(60.0, 70.0)))


def test_a_large_model_that_never_trained_shows_no_saving_and_no_gain():
    # the motivated run's condition never fired (e.g. --k 1000000000): its large model is its starting point
    summaries = {
        "classical_base": summary(base_acc=60.0, flops=1e12),
        "classical_large": summary(large_acc=66.0, flops=3e12, p=1.0),
        "motivated": summary(base_acc=61.0, large_acc=61.0, flops=1e12, p=0.0, skipped=9),
    }
    rows = comparison_rows(summaries)
    table = {r["arm"]: r for r in rows}
    assert table["motivated large"]["FLOPs saving vs large"] == "never trained"
    assert table["motivated large"]["ACC/FLOPs (pts/TFLOP)"] == "never trained"
    assert table["motivated base"]["FLOPs saving vs large"] == pytest.approx(3.0)  # its base did train
    assert table["motivated large"]["large steps"] == 0 and table["motivated large"]["skipped steps"] == 9
    assert math.isnan(efficiency_gain(rows))
    assert "never trained its large model" in gain_sentence(rows)
    printed = markdown_table(rows)
    assert "large steps" in printed and "skipped steps" in printed
    assert "| motivated large | m | 61.00 | 1.000 | 0.000 | 0 | 9 | 1.0 | never trained | never trained |" in printed


def test_a_runs_models_are_its_conditions_roles_and_an_unknown_condition_is_named(tmp_path):
    names = {"base": "resnet20", "motivated": "resnet56"}

    def models(condition):
        return TrainRun(tmp_path, {"condition": condition, **names}, [], [], None).model_names

    assert models("decrease") == models("random") == names
    assert models("never") == {"base": "resnet20"} and models("always") == {"motivated": "resnet56"}
    with pytest.raises(RunFolderError, match="condition 'sometimes', which is not registered here: register it"):
        models("sometimes")
