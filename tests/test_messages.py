"""Nothing silent: resuming a folder with the wrong command, Ctrl-C in a comparison, what `seeking evaluate`
says about its data, the permissions of result files, and the wording of messages and tables."""

import dataclasses
import importlib.metadata
import json
import math
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from helpers import signal_at
from PIL import Image

import seeking
from seeking import ConfigError, TrainConfig, evaluate, load_dataset, load_model, save_model, train
from seeking.cli.main import main
from seeking.io import atomic_write_bytes
from seeking.reporting.excitation import excitation_csv, excitation_markdown, excitation_rows
from seeking.reporting.excitation_plots import curves_figure
from seeking.runs import INCOMPLETE, run_config
from seeking.training.excite import ExciteConfig, compare_excitation
from seeking.wording import counted

TINY = dict(train_subset=64, test_subset=30, epochs=1, batch_size=32, k=1, checkpoint_every=1)
QUIET = dict(progress=False, log=lambda line: None)
FAST = ["--train-subset", "64", "--test-subset", "30", "--batch-size", "32", "--k", "1", "--quiet"]


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEKING_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny motivated run on digits (checkpoints kept, its log in ``.lines``), written under the
    umask 027 and then reported on, so that the permissions of every file it writes can be checked."""
    lines = []
    previous = os.umask(0o027)
    try:
        folder = tmp_path_factory.mktemp("finished") / "run"
        result = train(TrainConfig(**TINY), folder, progress=False, log=lines.append)
        assert main(["report", str(result.run_dir)]) == 0
    finally:
        os.umask(previous)
    result.lines = lines
    return result


@pytest.fixture
def unfinished(finished, tmp_path):
    """An unfinished `seeking train` folder: the finished run without its results."""
    run = shutil.copytree(finished.run_dir, tmp_path / "train-run")
    (run / "summary.json").unlink()
    return run


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def gray_folders(root, classes, per_class=2, size=8):
    """root/{train,test}/<class>/*.png of ``size`` x ``size`` grayscale images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


# --- resuming the wrong kind of folder -------------------------------------------------------------


@pytest.mark.parametrize("command", ["compare", "excite"])
def test_resuming_a_train_folder_with_another_command_names_the_right_one(unfinished, command, capsys):
    before = listing(unfinished)
    assert main([command, "--resume", str(unfinished), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {unfinished} with seeking {command}: it is a 'seeking train' folder" in err
    assert f"continue it with: seeking train --resume {unfinished}" in err
    assert "unknown configuration key" not in err and err.count("\n") == 1
    assert listing(unfinished) == before  # nothing written: no arm ran inside it


@pytest.mark.parametrize(
    "kind,values",
    [
        ("compare", {**TrainConfig().to_dict(), "random_control": True}),
        ("excite", dataclasses.asdict(ExciteConfig())),
    ],
)
@pytest.mark.parametrize("recorded", [True, False])  # False: a folder written before the kind was recorded
def test_each_kind_of_folder_is_recognised_on_resume(kind, values, recorded, tmp_path, capsys):
    config = run_config(kind, values)
    if not recorded:
        del config["kind"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert f"it is a 'seeking {kind}' folder; continue it with: seeking {kind} --resume {tmp_path}" in (
        capsys.readouterr().err
    )


def test_a_folder_whose_config_names_no_command_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"seeking_version": seeking.__version__, "lr": 0.1}))
    assert main(["compare", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "does not say which command wrote it (seeking train, compare, excite)" in capsys.readouterr().err


def test_each_run_folder_records_its_kind(finished):
    assert json.loads((finished.run_dir / "config.json").read_text())["kind"] == "train"


# --- Ctrl-C during a comparison -----------------------------------------------------------------------


def test_ctrl_c_in_a_comparison_says_how_to_continue_the_whole_comparison(tmp_path, inject, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--epochs", "2", "--no-random-control", "--out", str(out)]
    inject(signal_at(4))  # 2 steps per epoch, 4 per arm: Ctrl-C in the last step of the first arm
    assert main(argv) == 130
    err = capsys.readouterr().err
    # the first arm finishes; the request is not lost with it: the next arm stops after its first step
    assert (out / "classical_base" / "summary.json").is_file()
    assert "SIGINT at step 1 of arm classical_large: checkpoint written" in err
    assert f"continue with: seeking compare --resume {out}\n" in err and "seeking train --resume" not in err
    for folder in (out, out / "classical_large"):  # what the report shows of an unfinished arm
        assert f"Continue it with: seeking compare --resume {out}\n" in (folder / INCOMPLETE).read_text()
    # an arm given to --resume of the wrong kind names the command that continues its whole comparison
    assert main(["compare", "--resume", str(out / "classical_large")]) == 2
    assert f"continue it with: seeking compare --resume {out}\n" in capsys.readouterr().err
    inject.undo()
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    summary = json.loads((out / "classical_large" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["motivated_steps"] == 4
    # the classical large model is no motivated one: its file says what it is
    assert summary["models"]["motivated"]["checkpoint"] == "large.safetensors"
    assert sorted(p.name for p in (out / "classical_large").glob("*.safetensors")) == ["large.safetensors"]


# --- seeking evaluate --------------------------------------------------------------------------------


def test_evaluate_uses_the_recorded_data_set_and_says_on_how_many_images(finished, capsys):
    digits = load_dataset("digits", progress=False)
    model, _ = load_model(finished.run_dir / "base.safetensors")
    everything = evaluate(model, digits.test, digits.mean, digits.std)
    # by default the run's own test examples (its --test-subset 30): the figure the run reported
    assert main(["evaluate", str(finished.run_dir / "base.safetensors")]) == 0
    printed = capsys.readouterr()
    reported = finished.summary["models"]["base"]
    assert printed.out == (
        "resnet20 on digits test (30 images, the data set recorded in the model file, the run's --test-subset 30): "
        f"accuracy {reported['accuracy']:.2f}%, loss {reported['loss']:.4f}\n"
    )
    assert printed.err == ""
    # another data set (here: digits named again) or size is the user's: all 360 test images
    assert main(["evaluate", str(finished.run_dir / "base.safetensors"), "--data", "digits"]) == 0
    assert capsys.readouterr().out == (
        f"resnet20 on digits test (360 images): accuracy {everything['accuracy']:.2f}%, loss {everything['loss']:.4f}\n"
    )
    assert main(["evaluate", str(finished.run_dir / "base.safetensors"), "--test-subset", "0"]) == 2


def test_evaluate_finds_a_data_folder_recorded_by_a_relative_path(tmp_path, monkeypatch, capsys):
    gray_folders(tmp_path / "shapes", ["a", "b", "c"], per_class=11)
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data="shapes", train_subset=None, test_subset=None, epochs=1, batch_size=32, k=1)
    train(config, "run", **QUIET)
    monkeypatch.chdir(tmp_path / "run")  # elsewhere: the recorded path still finds the data
    assert main(["evaluate", "large.safetensors"]) == 0
    assert "resnet32 on shapes test (33 images, the data set recorded in the model file)" in capsys.readouterr().out


def test_evaluate_warns_when_the_data_has_fewer_or_other_classes(finished, tmp_path, capsys):
    model = str(finished.run_dir / "base.safetensors")
    three = gray_folders(tmp_path / "three", ["0", "1", "2"])
    assert main(["evaluate", model, "--data", str(three)]) == 0
    out, err = capsys.readouterr()
    assert "warning: resnet20 has 10 classes but 'three' has 3" in err
    assert "(6 images)" in out
    ten = gray_folders(tmp_path / "letters", list("abcdefghij"), per_class=1)
    assert main(["evaluate", model, "--data", str(ten)]) == 0
    assert "label 0 is 'a' here, '0' in training" in capsys.readouterr().err


def test_evaluate_refuses_data_the_model_cannot_score(tmp_path, capsys):
    three = gray_folders(tmp_path / "three", ["x", "y", "z"], per_class=11)
    run = train(TrainConfig(data=str(three), epochs=1, batch_size=32, k=1, condition="never"), tmp_path / "r", **QUIET)
    assert main(["evaluate", str(run.run_dir / "base.safetensors"), "--data", "digits"]) == 2
    assert "resnet20 has 3 classes but 'digits' has 10: labels beyond the model's outputs" in capsys.readouterr().err


def test_evaluate_of_an_old_model_file_without_its_data_set_asks_for_it(tmp_path, capsys):
    path = tmp_path / "old.safetensors"
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": [32, 32]}
    save_model(seeking.create_model("resnet20", **kwargs), path, "resnet20", kwargs, {"dataset": "cifar10"})
    assert main(["evaluate", str(path)]) == 2
    assert "does not record where its data set is (trained on 'cifar10'); give it with --data" in (
        capsys.readouterr().err
    )


def test_evaluate_of_a_training_checkpoint_or_a_torch_file_says_what_it_is(finished, tmp_path, capsys):
    state = sorted((finished.run_dir / "checkpoints").glob("step-*.pt"))[-1]
    assert main(["evaluate", str(state)]) == 2
    err = capsys.readouterr().err
    assert f"{state} is a training checkpoint (the state --resume continues from), not a model file" in err
    assert "safetensors" not in err.split("not a model file")[0]
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    assert main(["evaluate", str(pickled)]) == 2
    assert "is a torch.save file, not a safetensors model file" in capsys.readouterr().err


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_follow_the_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask


def test_every_result_file_follows_the_umask_like_the_logs(finished):
    run = finished.run_dir
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    kinds = {"config.json", "large.safetensors", "steps.jsonl", "summary.json", "report/report.html"}
    assert kinds <= set(modes) and any(name.endswith(".png") for name in modes)
    assert any(name.startswith("checkpoints/") for name in modes)
    assert set(modes.values()) == {0o640}, modes


# --- wording ----------------------------------------------------------------------------------------


def test_a_non_finite_number_is_called_so(tmp_path, capsys):
    assert main(["train", *FAST, "--lr", "nan", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "seeking: error: lr must be a finite number, got nan\n"
    with pytest.raises(seeking.ConfigError, match=r"^epochs must be an integer, got 1\.5$"):
        TrainConfig.from_dict({"epochs": 1.5})
    with pytest.raises(seeking.ConfigError, match=r"^train_subset must be an integer, or null, got '5' \(str\)$"):
        TrainConfig.from_dict({"train_subset": "5"})


def test_a_file_that_is_no_archive_is_not_called_a_damaged_one(tmp_path, capsys):
    text = tmp_path / "poem.txt"
    text.write_text("shall I compare thee\n" * 20)
    assert main(["train", *FAST, "--data", str(text), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    # a .txt file is text for a language model pair (gpt_2l:gpt_4l), not an image archive
    assert "'resnet20' does not train on a text file" in err and "check --pair (or --base, --motivated)" in err
    assert "damaged" not in err and not (tmp_path / "run").exists()
    picture = tmp_path / "picture.png"
    Image.new("L", (4, 4)).save(picture)
    assert main(["train", *FAST, "--data", str(picture), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{picture} is neither a folder nor a tar archive" in err and "excite" not in err


def test_an_undecodable_image_is_named_by_its_path(tmp_path, capsys):
    data = gray_folders(tmp_path / "data", ["a", "b"])
    (data / "train" / "a" / "1.png").write_bytes(b"not a png")
    assert main(["train", *FAST, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"cannot decode image {data / 'train' / 'a' / '1.png'}: not an image format Pillow knows" in err
    assert "BytesIO" not in err and "0x" not in err


def excitation_result(seeds):
    curve = [{"step": 1, "train_loss": 1.0, "test acc %": 50.0}, {"step": 2, "train_loss": 0.5, "test acc %": 60.0}]
    runs = [
        {"arm": arm, "seed": s, "test acc %": 60.0 + s + (arm != "none"), "train_loss": 0.5 + s / 10, "curve": curve}
        for s in seeds
        for arm in ("none", "zero_sum")
    ]
    return {"metric": "test acc %", "runs": runs, "config": {}}


def test_one_seed_shows_no_spread_and_is_one_seed():
    result = excitation_result([0])
    rows = excitation_rows(result["runs"], "test acc %")
    assert rows[0]["test acc % std"] is None
    table = excitation_markdown(rows, "test acc %")
    assert "±" not in table and "| 60.000 |" in table and "| +1.000 (n=1: no interval) |" in table
    assert (
        excitation_csv(rows).splitlines()[1].startswith("plain optimizer,1,0,60.0,,")
    )  # arm, seeds, skipped steps, mean, no std
    labels = [t.get_text() for t in curves_figure(result).axes[0].get_legend().get_texts()]
    assert labels == ["plain optimizer (1 seed)", "excitation zero_sum (1 seed)"]
    two = excitation_markdown(excitation_rows(excitation_result([0, 1])["runs"], "test acc %"), "test acc %")
    assert "| 60.500 ± 0.707 |" in two  # statistics.stdev([60, 61]) = 0.7071


def test_counts_read_right():
    assert [counted(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    assert counted(1, "switch", "switches") == "1 switch" and counted(3, "switch", "switches") == "3 switches"


def test_a_one_epoch_run_says_one_epoch(finished):
    assert any("condition decrease, 1 epoch x 2 steps" in line for line in finished.lines)


def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"seeking {seeking.__version__}\n"
    assert importlib.metadata.version("seeking") == seeking.__version__


# --- from a new user's try of the engine ----------------------------------------------------------


def test_a_bad_option_value_is_one_line_and_exit_code_2(capsys):
    for argv, said in (
        (["train", "--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
        (["excite", "--optimizer", "lamb"], "argument --optimizer: invalid choice: 'lamb'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"seeking: error: {said}") and err.count("\n") == 1


def test_a_report_folder_that_cannot_be_written_is_one_error(tmp_path, capsys, finished, monkeypatch):
    (tmp_path / "taken").write_text("x")
    assert main(["report", str(finished.run_dir), "--out", str(tmp_path / "taken")]) == 2
    taken = tmp_path / "taken"
    said = f"seeking: error: report folder {taken} is an existing file, not a folder; choose another --out\n"
    assert capsys.readouterr().err == said
    import errno

    import seeking.reporting.report as report

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "atomic_write_bytes", full)  # a full disk (root writes any folder)
    assert main(["report", str(finished.run_dir), "--out", str(tmp_path / "report")]) == 2
    said = f"seeking: error: cannot write the report into {tmp_path / 'report'}: No space left on device; "
    assert capsys.readouterr().err == said + "choose a writable --out\n"


def test_a_schedule_that_gives_no_finite_rate_is_refused_before_anything_is_written(tmp_path):
    from seeking.training.optim import SCHEDULES, register_schedule

    register_schedule("broken")(lambda step, total, warmup: math.nan if step == 3 else 1.0)
    try:
        for argv in (["train", "--epochs", "1"], ["excite", "--steps", "5", "--seeds", "0", "--arms", "none"]):
            out = tmp_path / argv[0]
            with pytest.raises(ConfigError, match="'broken' schedule gives a learning rate of nan at step 3"):
                run = {"train": train, "excite": compare_excitation}[argv[0]]
                config = (TrainConfig if argv[0] == "train" else ExciteConfig)(schedule="broken", batch_size=64)
                run(config, out, progress=False, log=lambda line: None)
            assert not out.exists()
    finally:
        del SCHEDULES["broken"]
