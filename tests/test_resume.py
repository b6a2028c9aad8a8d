"""Runs that survive: a run stopped at any step (crash, SIGKILL, Ctrl-C) and resumed ends bit for bit
like an uninterrupted one; damaged or foreign checkpoints and bad resume requests fail clearly."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import Crash, assert_same_run, crash_at, json_lines, poisoning, run_differences, signal_at, without_timings

import seeking.training.loop as loop
from seeking import TrainConfig, train
from seeking.cli.main import main
from seeking.runs import INCOMPLETE
from seeking.training.checkpoint import load_state, save_state

QUIET = dict(progress=False, log=lambda line: None)
# 4 steps per epoch, 8 in all; checkpoints after steps 3, 4 (epoch end), 6 and 8
TINY = dict(train_subset=128, test_subset=60, epochs=2, batch_size=32, k=1, checkpoint_every=3, keep_checkpoints=2)
VARIANTS = {
    "motivated": {},
    "zero-copy sharing, shared BN, separate optimizer state": dict(
        sync="share", batchnorm="shared", optimizer_state="separate", bn_recalibrate=2
    ),
    "random control": dict(condition="random", p=0.5),
    "classical": dict(condition="never"),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return {
        name: train(TrainConfig(**TINY, **extra), root / str(i), **QUIET).run_dir
        for i, (name, extra) in enumerate(VARIANTS.items())
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("crash", [1, 4, 7])  # before any checkpoint, after an epoch's, after a mid-epoch one
def test_a_run_that_dies_at_any_step_resumes_bit_for_bit(variant, crash, references, tmp_path, inject):
    config = TrainConfig(**TINY, **VARIANTS[variant])
    inject(crash_at(crash))
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    assert (tmp_path / "run" / INCOMPLETE).exists() and not (tmp_path / "run" / "summary.json").exists()
    inject.undo()
    train(config, tmp_path / "run", resume=True, **QUIET)
    assert_same_run(references[variant], tmp_path / "run")
    assert not (tmp_path / "run" / INCOMPLETE).exists()
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))) == 2  # keep_checkpoints


def test_a_run_that_dies_while_saving_its_models_resumes(references, tmp_path, monkeypatch):
    config = TrainConfig(**TINY)

    def dying(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(loop, "save_model", dying)
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    monkeypatch.undo()
    train(config, tmp_path / "run", resume=True, **QUIET)
    assert_same_run(references["motivated"], tmp_path / "run")


def test_the_same_seed_and_config_give_identical_runs(references, tmp_path):
    train(TrainConfig(**TINY), tmp_path / "again", **QUIET)
    assert_same_run(references["motivated"], tmp_path / "again")


# --- real processes: SIGKILL and Ctrl-C ---------------------------------------------------------

CLI_RUN = ["--train-subset", "256", "--test-subset", "60", "--epochs", "3", "--batch-size", "32", "--k", "1"]
CLI_RUN += ["--checkpoint-every", "2", "--quiet"]  # 8 steps per epoch, 24 in all


def signal_after(argv, run_dir, lines, sig):
    """Start ``seeking`` in a subprocess and send ``sig`` once ``steps.jsonl`` shows ``lines`` steps."""
    proc = subprocess.Popen([sys.executable, "-m", "seeking", *argv], stderr=subprocess.PIPE, text=True)
    steps = Path(run_dir) / "steps.jsonl"
    while proc.poll() is None:
        if steps.exists() and steps.read_bytes().count(b"\n") >= lines:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "reference"
    assert main(["train", *CLI_RUN, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_result(seed, cli_reference, tmp_path):
    run = tmp_path / "run"
    lines = random.Random(seed).randint(2, 18)
    code, _ = signal_after(["train", *CLI_RUN, "--out", str(run)], run, lines, signal.SIGKILL)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    for path in (run / "checkpoints").glob("step-*.pt"):
        load_state(path)  # every checkpoint a kill leaves behind is whole
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(cli_reference, run)


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(cli_reference, tmp_path):
    run = tmp_path / "run"
    code, err = signal_after(["train", *CLI_RUN, "--out", str(run)], run, 5, signal.SIGINT)
    assert code == 130
    assert f"checkpoint written; continue with: seeking train --resume {run}" in err
    assert "Traceback" not in err
    step = int(err.split(" at step ")[1].split(":")[0])
    newest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    assert newest.name == f"step-{step:09d}.pt" and load_state(newest)["progress"]["step"] == step
    assert "seeking train --resume" in (run / INCOMPLETE).read_text()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(cli_reference, run)


# --- damaged, foreign and refused ----------------------------------------------------------------


@pytest.fixture
def crashed(tmp_path, inject):
    """An unfinished run (died at step 7) with checkpoints after steps 4 and 6."""
    inject(crash_at(7))
    with pytest.raises(Crash):
        train(TrainConfig(**TINY), tmp_path / "run", **QUIET)
    inject.undo()
    return tmp_path / "run"


def newest(run):
    return sorted((run / "checkpoints").glob("step-*.pt"))[-1]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(crashed, references, capsys):
    data = newest(crashed).read_bytes()
    newest(crashed).write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", str(crashed)]) == 0
    err = capsys.readouterr().err
    assert "step-000000006.pt is damaged (truncated or corrupted" in err and "trying an older checkpoint" in err
    assert "resuming" in err and "at step 4" in err
    assert_same_run(references["motivated"], crashed)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[:-100], "is damaged (truncated or corrupted: its checksum does not match)"),
        (lambda b: b[:500] + bytes([b[500] ^ 1]) + b[501:], "is damaged"),
        (lambda b: b"", "is not a seeking training checkpoint"),
        (lambda b: b"PK\x03\x04" + b[4:], "is not a seeking training checkpoint"),
        (lambda b: b.replace(b"seeking-training-state 1 ", b"seeking-training-state 9 ", 1), "of format 9"),
    ],
)
def test_a_damaged_checkpoint_fails_with_a_clear_message(crashed, damage, message, capsys):
    for path in (crashed / "checkpoints").glob("step-*.pt"):
        path.write_bytes(damage(path.read_bytes()))
    assert main(["train", "--resume", str(crashed), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("seeking: error:") == 1
    assert not (crashed / "summary.json").exists()


def test_a_checkpoint_from_another_version_or_another_run_is_refused(crashed, tmp_path, capsys, inject):
    state = load_state(newest(crashed))
    save_state(newest(crashed), {**state, "seeking_version": "0.0.1"})
    assert main(["train", "--resume", str(crashed), "--quiet"]) == 2
    assert "written by seeking 0.0.1" in capsys.readouterr().err

    other = tmp_path / "other"  # another pair, died before its first checkpoint
    inject(crash_at(1))
    with pytest.raises(Crash):
        train(TrainConfig(**{**TINY, "motivated": "resnet44"}), other, **QUIET)
    inject.undo()
    (other / "checkpoints").mkdir()
    shutil.copy(crashed / "checkpoints" / "step-000000004.pt", other / "checkpoints" / "step-000000009.pt")
    assert main(["train", "--resume", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "motivated='resnet32' (run: 'resnet44')" in err


def test_a_log_shorter_than_its_checkpoint_says_is_refused(crashed, capsys):
    (crashed / "steps.jsonl").write_text("")
    assert main(["train", "--resume", str(crashed), "--quiet"]) == 2
    assert "steps.jsonl holds 0 bytes but the checkpoint recorded" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "0.1"], "continues a run with the options it was started with; drop --lr"),
        (["--out", "elsewhere", "--epochs", "3"], "drop --epochs, --out"),
    ],
)
def test_resume_refuses_options_beside_it(crashed, argv, message, capsys):
    assert main(["train", "--resume", str(crashed), *argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_what_cannot_be_resumed(references, crashed, tmp_path, capsys):
    cases = {
        str(references["motivated"]): "the run is complete (it has summary.json)",
        str(tmp_path / "missing"): "no such run folder",
        str(tmp_path): "it has no config.json, so it is not a seeking run folder",
    }
    for folder, message in cases.items():
        assert main(["train", "--resume", folder, "--quiet"]) == 2
        assert message in capsys.readouterr().err
    config = json.loads((crashed / "config.json").read_text())
    (crashed / "config.json").write_text(json.dumps({**config, "seeking_version": "0.0.1"}))
    assert main(["train", "--resume", str(crashed), "--quiet"]) == 2
    assert "it was started by seeking 0.0.1" in capsys.readouterr().err


def test_keep_checkpoints_keeps_the_last_n(tmp_path):
    train(TrainConfig(**{**TINY, "checkpoint_every": 1, "keep_checkpoints": 3}), tmp_path / "run", **QUIET)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-000000006.pt", "step-000000007.pt", "step-000000008.pt"]


# --- compare and excite ---------------------------------------------------------------------------


def test_an_interrupted_comparison_resumes_arm_by_arm(tmp_path, inject):
    argv = ["compare", "--train-subset", "128", "--test-subset", "60", "--epochs", "1", "--batch-size", "32"]
    argv += ["--k", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    inject(crash_at(10))  # arm 3 (motivated), its 3rd step
    with pytest.raises(Crash):
        main([*argv, "--out", str(tmp_path / "run")])
    inject.undo()
    assert main(["compare", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_run(tmp_path / "reference", tmp_path / "run")  # every arm's folder
    tables = [(tmp_path / d / "comparison.csv").read_text() for d in ("reference", "run")]
    assert [line.split(",")[:4] for line in tables[0].splitlines()] == [
        line.split(",")[:4] for line in tables[1].splitlines()
    ]
    assert not (tmp_path / "run" / INCOMPLETE).exists()


EXCITE = ["excite", "--steps", "12", "--eval-every-steps", "5", "--batch-size", "64", "--seeds", "0", "--quiet"]


def excitation_runs(out):
    return without_timings(json.loads((Path(out) / "excitation.json").read_text())["runs"])


@pytest.mark.parametrize("crash", [7, 20])  # plain arm at step 8; zero_sum arm at step 9 (after its step-5 checkpoint)
def test_an_excitation_experiment_resumes_bit_for_bit(crash, tmp_path, inject):
    argv = [*EXCITE, "--arms", "none", "zero_sum"]
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    inject(crash_at(crash))
    with pytest.raises(Crash):
        main([*argv, "--out", str(tmp_path / "run")])
    inject.undo()
    assert main(["excite", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert excitation_runs(tmp_path / "reference") == excitation_runs(tmp_path / "run")
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "runs").iterdir()) == ["none-seed0.json", "zero_sum-seed0.json"]


def test_a_text_experiment_resumes_bit_for_bit(tmp_path, inject):
    text = tmp_path / "poem.txt"
    text.write_text("so long lives this, and this gives life to thee.\n" * 60, encoding="utf-8")
    small = json.dumps({"depth": 1, "width": 32, "heads": 2, "num_experts": 4})
    argv = [*EXCITE, "--model", "gpt_moe_tiny", "--data", str(text), "--model-kwargs", small, "--block-size", "16"]
    argv += ["--arms", "zero_sum", "--optimizer", "adam", "--lr", "0.003"]
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    inject(crash_at(8))
    with pytest.raises(Crash):
        main([*argv, "--out", str(tmp_path / "run")])
    inject.undo()
    assert main(["excite", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert excitation_runs(tmp_path / "reference") == excitation_runs(tmp_path / "run")


def test_excite_skips_non_finite_steps_and_stops_after_a_run_of_them(tmp_path, inject, capsys):
    inject(poisoning({2}))  # the third step
    assert main([*EXCITE, "--arms", "zero_sum", "--out", str(tmp_path / "one")]) == 0
    (run,) = json.loads((tmp_path / "one" / "excitation.json").read_text())["runs"]
    assert run["skipped_steps"] == 1
    assert all(torch.isfinite(torch.tensor(c["train_loss"])) for c in run["curve"])
    inject.undo()
    inject(poisoning(range(1000)))
    assert main([*EXCITE, "--arms", "zero_sum", "--max-nonfinite", "4", "--out", str(tmp_path / "many")]) == 2
    assert "zero_sum seed 0 diverged: 4 non-finite losses or gradients in a row" in capsys.readouterr().err


def test_excite_resume_refuses_a_finished_experiment(tmp_path, capsys):
    assert main([*EXCITE, "--arms", "none", "--steps", "2", "--out", str(tmp_path / "done")]) == 0
    assert main(["excite", "--resume", str(tmp_path / "done")]) == 2
    assert "complete (it has excitation.json)" in capsys.readouterr().err


def test_run_differences_sees_a_changed_weight_and_a_changed_log(references, tmp_path):
    copy = Path(shutil.copytree(references["motivated"], tmp_path / "copy"))
    assert run_differences(references["motivated"], copy) == []
    weights = bytearray((copy / "base.safetensors").read_bytes())
    weights[-1] ^= 1  # the last bit of the last tensor
    (copy / "base.safetensors").write_bytes(bytes(weights))
    (copy / "steps.jsonl").write_text((copy / "steps.jsonl").read_text().replace('"base"', '"motivated"', 1))
    assert run_differences(references["motivated"], copy) == [
        "base.safetensors: the weights differ",
        "steps.jsonl: the content differs",
    ]


def test_logs_of_a_resumed_run_hold_each_step_once(crashed):
    train(TrainConfig(**TINY), crashed, resume=True, **QUIET)
    steps = [entry["step"] for entry in json_lines(crashed / "steps.jsonl")]
    assert steps == list(range(8))


def test_ctrl_c_in_an_excitation_experiment_checkpoints_and_resumes(tmp_path, inject, capsys):
    argv = [*EXCITE, "--arms", "none", "zero_sum"]
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    inject(signal_at(17))  # Ctrl-C during the zero_sum arm's 5th step: it finishes, and the arm stops
    assert main([*argv, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "SIGINT during zero_sum seed 0 at step 5: checkpoint written; continue with: seeking excite --resume" in err
    assert [p.name for p in (tmp_path / "run" / "checkpoints" / "zero_sum-seed0").iterdir()] == ["step-000000005.pt"]
    inject.undo()
    assert main(["excite", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_run(tmp_path / "reference", tmp_path / "run")


def test_a_full_disk_stops_the_run_resumably_and_says_how(references, tmp_path, monkeypatch):
    import errno

    import seeking.training.checkpoint as training_states
    from seeking.errors import StorageError

    real, calls = training_states.atomic_write_bytes, [0]

    def filling(path, data):  # the first checkpoint is written, then the disk is full
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(training_states, "atomic_write_bytes", filling)
    run = tmp_path / "run"
    with pytest.raises(StorageError) as info:
        train(TrainConfig(**TINY), run, **QUIET)
    message = str(info.value)
    assert "No space left on device" in message and "step-000000003.pt" in message
    assert f"continue with: seeking train --resume {run}" in message and "\n" not in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000000003.pt"]  # no half-written file
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(references["motivated"], run)
