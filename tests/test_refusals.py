"""Runs that cannot work are refused before their folder exists (exit 2, one message naming the fix);
a run folder is claimed atomically; a folder that cannot be written is one message, and a full disk in
the middle of a run leaves it resumable."""

import errno
import json
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import seeking.runs as runs
from seeking import ConfigError, SeekingError, TrainConfig, train
from seeking.cli.main import main
from seeking.data import ImageData, ImageDataset
from seeking.runs import INCOMPLETE, claim_run_dir
from seeking.training.engine import register_step_hook
from seeking.training.preflight import probing

QUIET = dict(progress=False, log=lambda line: None)
FAST = ["--train-subset", "64", "--test-subset", "20", "--epochs", "1", "--batch-size", "16", "--quiet"]
# the smallest MoE models, so that a run that starts costs little
TINY_MOE = {
    "micro_moe": {"depth": 1, "width": 8},
    "vit_moe_tiny": {"depth": 1, "width": 8, "heads": 1, "num_experts": 2, "top_k": 1, "mlp_ratio": 1},
    "gpt_moe_tiny": {"depth": 1, "width": 8, "heads": 1, "num_experts": 2, "top_k": 1, "mlp_ratio": 1},
}
ONE_STEP = ["--steps", "1", "--eval-every-steps", "1", "--seeds", "0", "--arms", "none", "--quiet"]


def refused(argv, out, capsys):
    """Run the CLI; return its one-line error, after checking exit code 2 and that nothing was written."""
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    return err


# --- constructor arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", *FAST, "--model-kwargs", '{"foo": 1}'], "model 'resnet20' takes no argument 'foo'"),
        (["train", *FAST, "--model-kwargs", '{"width": "x"}'], "argument 'width' must be of type int, got 'x'"),
        (["train", *FAST, "--model-kwargs", '{"width": true}'], "argument 'width' must be of type int, got True"),
        (["excite", *ONE_STEP, "--model-kwargs", '{"foo": 1}'], "model 'micro_moe' takes no argument 'foo'"),
        (["excite", *ONE_STEP, "--model-kwargs", '{"sparsity": "high"}'], "'sparsity' must be of type float"),
    ],
)
def test_unknown_or_mistyped_model_kwargs_are_refused(argv, message, tmp_path, capsys):
    err = refused(argv, tmp_path / "run", capsys)
    assert message in err
    if "takes no argument" in err:  # and it names the arguments the constructor does take
        assert "it takes: depth, " in err and "width" in err


# --- models that cannot take the data, and sizes that do not fit ----------------------------------------


def test_a_patch_larger_than_the_image_names_the_fix():
    model = nn.Sequential(nn.Conv2d(1, 4, 16, 16), nn.Flatten())
    with pytest.raises(ConfigError) as info, probing("vit", model, (2, 1, 8, 12), "digits"):
        model(torch.zeros(2, 1, 8, 12))
    # 4 divides both sides: the largest patch that fits
    assert "patch size 16x16" in str(info.value) and "8x12 images" in str(info.value)
    assert '{"patch_size": 4}' in str(info.value)


def test_a_timm_vit_with_patch_16_on_8x8_digits_is_refused_before_its_folder(tmp_path, capsys):
    pytest.importorskip("timm")
    pair = ["--pair", "vit_tiny_patch16_224:vit_small_patch16_224", "--model-kwargs", '{"depth": 1}']
    err = refused(["train", *FAST, *pair], tmp_path / "run", capsys)
    assert "patch size 16x16" in err and "8x8 images" in err and '{"patch_size": 8}' in err


def test_a_text_too_short_for_a_block_names_the_largest_block_that_fits(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 11 + "!!!!!!!!!")  # 493 characters
    val = 493 - round(493 * 0.9)  # the validation split: the last 10%
    argv = ["excite", *ONE_STEP, "--model", "gpt_moe_tiny", "--model-kwargs", json.dumps(TINY_MOE["gpt_moe_tiny"])]
    argv += ["--data", str(text), "--batch-size", "2"]
    err = refused([*argv, "--block-size", str(val)], tmp_path / "run", capsys)
    assert f"use --block-size {val - 1} or less" in err
    assert main([*argv, "--block-size", str(val - 1), "--out", str(tmp_path / "fits")]) == 0  # the fix works


def test_a_batch_larger_than_the_data_is_refused(tmp_path, capsys):
    err = refused(["excite", *ONE_STEP, "--train-subset", "10", "--batch-size", "16"], tmp_path / "run", capsys)
    assert "batch_size 16 exceeds the 10 training images" in err and "--train-subset" in err


def test_a_text_batch_larger_than_the_text_is_refused(tmp_path, capsys):
    """The text member of the kind: more blocks per batch than the training text holds."""
    text = tmp_path / "short.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 11 + "!!!!!!!!!")  # 493: 444 train characters
    argv = ["excite", *ONE_STEP, "--model", "gpt_moe_tiny", "--model-kwargs", json.dumps(TINY_MOE["gpt_moe_tiny"])]
    err = refused([*argv, "--data", str(text), "--block-size", "8", "--batch-size", "437"], tmp_path / "run", capsys)
    assert "batch_size 437 exceeds the 436 distinct blocks of 8 characters" in err
    # train counts in epochs: a batch of more characters than the training text would make an epoch < 1 step
    argv = ["train", "--pair", "gpt_2l:gpt_4l", "--data", str(text), "--block-size", "8", "--epochs", "1"]
    err = refused([*argv, "--batch-size", "56"], tmp_path / "run", capsys)
    assert "a batch of 56 blocks of 8 characters holds 448 characters, more than the training text's 444" in err


def test_a_block_size_in_model_kwargs_is_refused_naming_the_option(tmp_path, capsys):
    argv = ["excite", *ONE_STEP, "--model", "gpt_moe_tiny", "--data", "x.txt", "--model-kwargs", '{"block_size": 8}']
    assert "must not set block_size: they come from the data set (a language model's block_size from --block-size)" in (
        refused(argv, tmp_path / "run", capsys)
    )


def synthetic(size, channels, n_train, n_test=6):
    gen = torch.Generator().manual_seed(0)

    def split(n):
        images = torch.randint(0, 256, (n, channels, *size), dtype=torch.uint8, generator=gen)
        return ImageData(images, torch.arange(n) % 3)

    stats = (0.5,) * channels, (0.3,) * channels
    return ImageDataset("synthetic", split(n_train), split(n_test), ("a", "b", "c"), *stats, hflip=False)


class FirstStepDone(Exception):
    pass


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    channels=st.sampled_from([1, 3]),
    n_train=st.integers(1, 8),
    batch_size=st.integers(1, 8),
    norm=st.sampled_from(["batch", "group"]),
    condition=st.sampled_from(["never", "always"]),  # one model (ResNet-20 or -32): the FLOP count is slow
)
def test_every_training_config_is_refused_before_writing_or_runs_its_first_step(
    size, channels, n_train, batch_size, norm, condition
):
    """Image size, channels, data and batch size at random: a run either takes its first step (in its
    claimed folder) or is refused with the project's error and no folder. (BatchNorm cannot train on
    one value per channel: batch 1 with images that shrink to 1x1.)"""

    def first_step(step, loss):
        raise FirstStepDone

    handle = register_step_hook(first_step)
    try:
        config = TrainConfig(condition=condition, epochs=1, batch_size=batch_size, model_kwargs={"norm": norm})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            try:
                train(config, out, dataset=synthetic(size, channels, n_train), **QUIET)
            except SeekingError as exc:
                assert str(exc) and not out.exists()
            except FirstStepDone:
                assert (out / INCOMPLETE).exists() and batch_size <= n_train
            else:
                raise AssertionError("the first step did not run")
    finally:
        handle.remove()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(list(TINY_MOE)),
    text_length=st.one_of(st.none(), st.integers(1, 150)),  # None: the digits (8x8 images)
    patch_size=st.integers(1, 10),
    block_size=st.integers(1, 30),
    batch_size=st.integers(1, 24),
    train_subset=st.one_of(st.none(), st.integers(1, 30)),
)
def test_every_excite_config_is_refused_before_writing_or_trains(
    model, text_length, patch_size, block_size, batch_size, train_subset, capsys
):
    """Model, data (text of any length, or images), patch, block, batch and subset sizes at random: exit 2
    with one message and no folder, or a finished experiment."""
    kwargs = {**TINY_MOE[model], **({"patch_size": patch_size} if model == "vit_moe_tiny" else {})}
    with tempfile.TemporaryDirectory() as tmp:
        data = "digits"
        if text_length is not None:
            data = str(Path(tmp) / "text.txt")
            Path(data).write_text(("abcdefghij" * 15)[:text_length])
        out = Path(tmp) / "run"
        argv = ["excite", *ONE_STEP, "--model", model, "--model-kwargs", json.dumps(kwargs), "--data", data]
        argv += ["--block-size", str(block_size), "--batch-size", str(batch_size), "--out", str(out)]
        argv += ["--train-subset", str(train_subset)] if train_subset else []
        code = main(argv)
        err = capsys.readouterr().err
        if code == 2:
            assert err.startswith("seeking: error: ") and err.count("\n") == 1 and not out.exists()
        else:
            assert code == 0 and (out / "excitation.json").exists(), err


# --- claiming the folder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True])  # a new folder, or an empty one that is already there
def test_of_runs_claiming_one_folder_at_once_exactly_one_wins(exists, tmp_path):
    for trial in range(10):
        folder = tmp_path / str(trial)
        if exists:
            folder.mkdir()
        start, outcomes = threading.Barrier(6), []

        def claim(n, folder=folder, start=start, outcomes=outcomes):
            start.wait()
            try:
                claim_run_dir(folder, {"claimant": n}, "resume")
                outcomes.append(n)
            except ConfigError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if isinstance(o, int)]
        assert len(winners) == 1 and len(outcomes) == 6, outcomes
        assert json.loads((folder / "config.json").read_text()) == {"claimant": winners[0]}
        assert sorted(p.name for p in folder.iterdir()) == ["INCOMPLETE", "config.json"]


def test_an_unwritable_out_is_refused_with_one_message(tmp_path, capsys, monkeypatch):
    # Tests run as root, which chmod does not stop: the refusal of the file system is simulated.
    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runs.os, "open", refuse)
    err = refused(["excite", *ONE_STEP, "--model-kwargs", json.dumps(TINY_MOE["micro_moe"])], tmp_path / "run", capsys)
    assert f"cannot create the run folder {tmp_path / 'run'}: Permission denied; choose a writable --out" in err


def test_a_full_disk_while_the_folder_is_claimed_leaves_nothing(tmp_path, capsys, monkeypatch):
    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs, "write_json", full)
    err = refused(["excite", *ONE_STEP, "--model-kwargs", json.dumps(TINY_MOE["micro_moe"])], tmp_path / "run", capsys)
    assert "No space left on device; nothing was written" in err


def full_disk_after(monkeypatch, module, writes):
    """Let ``module.atomic_write_bytes`` succeed ``writes`` times, then fail as a full disk does."""
    real, calls = module.atomic_write_bytes, [0]

    def writing(path, data):
        calls[0] += 1
        if calls[0] > writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(module, "atomic_write_bytes", writing)


def test_a_full_disk_in_a_compare_arm_says_how_to_resume_the_comparison(tmp_path, capsys, monkeypatch):
    import seeking.training.checkpoint as training_states

    out = tmp_path / "cmp"
    full_disk_after(monkeypatch, training_states, 1)  # the first checkpoint is written, the second is not
    argv = ["compare", *FAST, "--checkpoint-every", "1"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert "its checkpoints are whole (the newest: " in err and f"continue with: seeking compare --resume {out}" in err
    assert (out / INCOMPLETE).exists()
