import json
import subprocess
import sys

import pytest

from seeking.cli.main import main

FAST = ["--train-subset", "128", "--test-subset", "60", "--epochs", "1", "--batch-size", "32", "--quiet"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--base", "resnet32", "--motivated", "resnet20"], "must be smaller"),
        (["train", "--base", "resnet99"], "unknown base model 'resnet99'"),
        (["train", "--k", "0"], "k (consecutive loss decreases before switching) must be >= 1"),
        (["train", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
        (["train", "--data", "imagenet"], "imagenet"),
        (["train", "--pair", "resnet20"], "BASE:MOTIVATED"),
        (["train", "--pair", "efficientnet_b2:efficientnet_b0"], "must be smaller"),
        (["train", "--model-kwargs", "[4]"], "must be a JSON object"),
        (["train", "--model-kwargs", '{"num_classes": 3}'], "model_kwargs must not set num_classes"),
        (["train", "--epochs", "0"], "epochs must be >= 1"),
        (["evaluate", "/nonexistent/base.safetensors"], "no checkpoint file"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([argv[0], *FAST, *argv[1:], "--out", str(out)] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_different_class_counts_are_refused():
    from seeking import ConfigError, Motivator, Never, create_model

    base, large = create_model("resnet20", num_classes=10), create_model("resnet32", num_classes=100)
    with pytest.raises(ConfigError, match="num_classes"):
        Motivator(base, large, Never(), None, None)


def test_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "base.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    assert main(["evaluate", str(bad)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["train", *FAST, "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_existing_file_as_out_is_called_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["train", *FAST, "--out", str(tmp_path / "notes.txt")]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_train_then_evaluate_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "seeking", "train", *FAST, "--out", str(run)], capture_output=True, text=True, check=True
    )
    assert "test accuracy" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['models']['base']['accuracy']:.2f}%" in done.stdout
    ev = subprocess.run(
        [sys.executable, "-m", "seeking", "evaluate", str(run / "base.safetensors")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "resnet20 on digits test" in ev.stdout


def test_a_timm_pair_trains_and_its_checkpoints_load(tmp_path):
    run = tmp_path / "run"
    pair = ["--pair", "efficientnet_b0:efficientnet_b1", "--condition", "random", "--p", "0.5"]
    argv = ["train", *FAST, *pair, "--out", str(run)]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["p"] < 1
    from seeking import load_model

    model, meta = load_model(run / "large.safetensors")
    assert meta["model"] == "efficientnet_b1" and meta["model_kwargs"]["in_channels"] == 1
    assert type(model).__name__ == "EfficientNet"


def test_compare_prints_the_table_and_writes_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for arm in ("classical base", "classical large", "motivated base", "motivated large", "random-control base"):
        assert f"| {arm} |" in printed
    result = json.loads((out / "comparison.json").read_text())
    rows = {r["arm"]: r for r in result["rows"]}
    large, mot = rows["classical large"], rows["motivated large"]
    assert mot["FLOPs saving vs large"] == pytest.approx(large["train TFLOPs"] / mot["train TFLOPs"])
    assert (out / "comparison.csv").read_text().startswith("arm,model,test acc %")
    assert {p.name for p in out.iterdir()} >= {"classical_base", "classical_large", "motivated", "random_control"}
