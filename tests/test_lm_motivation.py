"""Motivation on language models: the dense GPT family, its FLOPs per token, ``seeking train`` and
``seeking compare`` on a text file (validation loss as the metric), resume, and what text refuses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import Crash, assert_same_run, crash_at, write_words

from seeking import TrainConfig, train
from seeking.cli.main import main
from seeking.errors import CheckpointError, ConfigError
from seeking.flops import gpt_train_flops_per_token, loss_step_flops
from seeking.model_file import load_model
from seeking.models import create_model, lm_loss
from seeking.motivation import Motivator, Never
from seeking.training.compare import compare
from seeking.training.tasks import TextModeling

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda line: None)
WIDTH = 16
# 1080 training characters: 1080 // (4 * 8) = 33 steps per epoch
TINY = dict(
    base="gpt_2l",
    motivated="gpt_4l",
    model_kwargs={"width": WIDTH},
    block_size=8,
    batch_size=4,
    epochs=1,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.0,
    warmup_epochs=0.2,
    k=1,
)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    return write_words(tmp_path_factory.mktemp("text") / "play.txt", 1200)


@pytest.fixture(scope="module")
def comparison(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    return out, compare(TrainConfig(data=str(text_file), **TINY), out, **QUIET)


def test_deeper_gpt_starts_as_exactly_the_base():
    torch.manual_seed(0)
    base = create_model("gpt_2l", vocab_size=11, block_size=8, width=WIDTH)
    large = create_model("gpt_4l", vocab_size=11, block_size=8, width=WIDTH)
    x = torch.randint(0, 11, (3, 8))
    before = large.blocks[2].attn.proj.weight.abs().sum()
    motivator = Motivator(base, large, Never(), torch.optim.SGD(base.parameters()), torch.optim.SGD(large.parameters()))
    assert before > 0 and large.blocks[2].attn.proj.weight.abs().sum() == 0  # made the identity, not born so
    assert motivator.map.extra and all(n.startswith(("blocks.2.", "blocks.3.")) for n in motivator.map.extra)
    base.eval(), large.eval()
    assert torch.equal(base(x), large(x))  # max |diff| = 0: the added blocks add exactly zero


@pytest.mark.parametrize(
    "name,kwargs", [("gpt_2l", {}), ("gpt_4l", {"width": 32, "heads": 2}), ("gpt_4l_w128", {"mlp_ratio": 2})]
)
def test_training_flops_per_token_match_the_closed_form(name, kwargs):
    vocab, block, batch = 13, 12, 3
    model = create_model(name, vocab_size=vocab, block_size=block, **kwargs)
    x = torch.randint(0, vocab, (batch, block))
    counted = loss_step_flops(model, x, x, lm_loss)  # torch's FlopCounterMode, with our formulas
    cfg = model.cfg
    per_token = gpt_train_flops_per_token(
        cfg["depth"], cfg["width"], vocab, block, mlp_ratio=cfg["hidden"] // cfg["width"]
    )
    assert counted == per_token * batch * block


def test_compare_on_text_trains_every_arm_and_reports_validation_loss(comparison, text_file):
    out, result = comparison
    rows = {r["arm"]: r for r in result["rows"]}
    assert list(rows) == [
        "classical base",
        "classical large",
        "motivated base",
        "motivated large",
        "random-control base",
        "random-control large",
    ]
    table = (out / "comparison.md").read_text()
    assert "| val loss | val ppl |" in table and "test acc" not in table and "val-loss drop/FLOPs gain" in table
    data = TextModeling(str(text_file), batch_size=4, block_size=8, device=torch.device("cpu"))
    steps = data.steps_per_epoch()
    per_step = {
        name: gpt_train_flops_per_token(depth, WIDTH, data.text.vocab_size, 8) * 4 * 8
        for name, depth in (("gpt_2l", 2), ("gpt_4l", 4))
    }
    for arm in ("classical_base", "classical_large", "motivated", "random_control"):
        summary = json.loads((out / arm / "summary.json").read_text())
        assert summary["metric"] == "loss" and summary["steps"] == steps
        large = summary["motivated_steps"]
        assert summary["train_flops"] == (steps - large) * per_step["gpt_2l"] + large * per_step["gpt_4l"]
        for model_record in summary["models"].values():
            # the figure reported is what the saved file gives, reloaded and evaluated again
            model, meta = load_model(out / arm / model_record["checkpoint"])
            assert meta["extra"]["kind"] == "text" and meta["extra"]["vocab"] == data.text.vocab
            assert data.evaluate(model)[0]["loss"] == pytest.approx(model_record["loss"], abs=1e-6)
            assert model_record["perplexity"] == pytest.approx(math.exp(model_record["loss"]))
    assert rows["classical large"]["large steps"] == steps and rows["classical base"]["large steps"] == 0
    assert 0 < rows["motivated large"]["large steps"] == rows["random-control large"]["large steps"] < steps
    gained = rows["classical base"]["val loss"] - rows["classical large"]["val loss"]
    cost = rows["classical large"]["train TFLOPs"] - rows["classical base"]["train TFLOPs"]
    assert rows["classical large"]["loss drop/TFLOP"] == pytest.approx(gained / cost)


def test_a_text_run_that_dies_resumes_bit_for_bit(text_file, tmp_path, inject):
    config = TrainConfig(data=str(text_file), **{**TINY, "epochs": 2}, checkpoint_every=10)
    reference = train(config, tmp_path / "reference", **QUIET).run_dir
    inject(crash_at(25))
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    inject.undo()
    train(config, tmp_path / "run", resume=True, **QUIET)
    assert_same_run(reference, tmp_path / "run")


def test_a_run_whose_text_file_changed_is_not_resumed(text_file, tmp_path, inject):
    """The same characters, another text: resumed, the run would train on other data without a word."""
    edited = tmp_path / "edited.txt"
    edited.write_text(text_file.read_text(encoding="utf-8"), encoding="utf-8")
    config = TrainConfig(data=str(edited), **TINY, checkpoint_every=5)
    inject(crash_at(8))
    with pytest.raises(Crash):
        train(config, tmp_path / "run", **QUIET)
    inject.undo()
    edited.write_text(edited.read_text(encoding="utf-8")[::-1], encoding="utf-8")  # same vocabulary
    with pytest.raises(CheckpointError, match="data_file_sha256"):
        train(config, tmp_path / "run", resume=True, **QUIET)


def test_models_of_two_families_are_refused_as_a_pair(text_file):
    config = TrainConfig(data=str(text_file), **{**TINY, "base": "gpt_moe_tiny", "motivated": "gpt_4l"})
    with pytest.raises(ConfigError, match="different families"):
        train(config, "unused", **QUIET)


def test_image_only_options_are_reported_unused_with_text(text_file):
    config = TrainConfig(data=str(text_file), train_subset=5, crop_padding=2, channels_last=True, **TINY)
    assert config.validate().unused_options() == [
        "--train-subset does nothing with text data",
        "--channels-last does nothing with text data",
        "--crop-padding does nothing with text data",
    ]
    assert TrainConfig(block_size=32).unused_options() == ["--block-size does nothing with image data"]


def test_image_models_on_text_and_language_models_on_images_are_refused(text_file, tmp_path, capsys):
    with pytest.raises(ConfigError, match="'resnet20' does not train on a text file"):
        train(TrainConfig(data=str(text_file), epochs=1), tmp_path / "a", **QUIET)
    assert not (tmp_path / "a").exists()
    assert main(["train", "--base", "gpt_2l", "--motivated", "gpt_4l", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "'gpt_2l' does not train on an image data set" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_evaluate_refuses_a_language_model_file(comparison, capsys):
    out, _ = comparison
    assert main(["evaluate", str(out / "classical_base" / "base.safetensors")]) == 2
    err = capsys.readouterr().err
    assert (
        "is a language model (gpt_2l" in err and "validation loss and perplexity are in its run's summary.json" in err
    )


def test_seeking_train_on_text_prints_validation_loss_and_warns_of_image_options(text_file, tmp_path, capsys):
    argv = ["train", "--pair", "gpt_2l:gpt_4l", "--data", str(text_file), "--model-kwargs", '{"width": 16}']
    argv += ["--block-size", "8", "--batch-size", "4", "--epochs", "1", "--optimizer", "adamw", "--lr", "3e-3"]
    argv += ["--warmup-epochs", "0.2", "--k", "1", "--test-subset", "9", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "--test-subset does nothing with text data" in captured.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for role, record in summary["models"].items():
        assert f"{role:9s} {record['model']:10s} val loss {record['loss']:.4f}" in captured.out
