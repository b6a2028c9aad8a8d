import json

import pytest
import safetensors.torch
import torch

from seeking import TrainConfig, create_model, evaluate, load_dataset, load_model, train
from seeking.training import train_step_flops

TINY = dict(data="digits", train_subset=256, test_subset=120, epochs=2, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", progress=False)


@pytest.fixture(scope="module")
def motivated_run(tmp_path_factory, digits):
    config = TrainConfig(**TINY, condition="decrease", k=1)
    return train(
        config, tmp_path_factory.mktemp("run") / "motivated", progress=False, log=lambda s: None, dataset=digits
    )


def test_run_folder_contents(motivated_run):
    run = motivated_run.run_dir
    for name in (
        "config.json",
        "steps.jsonl",
        "epochs.jsonl",
        "summary.json",
        "base.safetensors",
        "large.safetensors",
    ):
        assert (run / name).is_file(), name
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    summary = motivated_run.summary
    assert len(steps) == summary["steps"] == 2 * (256 // 32)
    assert [s["step"] for s in steps] == list(range(len(steps)))
    motivated = sum(s["model"] == "motivated" for s in steps)
    assert motivated == summary["motivated_steps"] and summary["p"] == motivated / len(steps)
    assert 0 < motivated < len(steps)  # k = 1 on real losses switches both ways
    assert len(epochs) == 2 and "base_accuracy" in epochs[-1] and "motivated_accuracy" in epochs[-1]
    # the log's "model" column replays the condition: a switch happens only after a decrease streak
    losses = [s["loss"] for s in steps]
    for i in range(1, len(steps)):
        if steps[i]["model"] == "motivated":
            assert losses[i - 1] < (losses[i - 2] if i >= 2 else float("inf"))


def test_flops_follow_the_model_that_stepped(motivated_run):
    s = motivated_run.summary
    per_step = s["step_flops"]
    assert s["train_flops_by_model"]["base"] == per_step["base"] * (s["steps"] - s["motivated_steps"])
    assert s["train_flops_by_model"]["motivated"] == per_step["motivated"] * s["motivated_steps"]
    assert per_step["motivated"] > per_step["base"]


def test_flop_count_matches_hand_count_for_a_linear_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    # forward 2*B*12*5, backward: grad of weight 2*B*12*5 (input needs no grad)
    assert train_step_flops(model, torch.zeros(4, 1, 3, 4), num_classes=5) == 2 * (2 * 4 * 12 * 5)
    assert model[1].weight.grad is None  # counted on a copy: the model itself is untouched


def test_saved_base_reproduces_reported_accuracy(motivated_run, digits):
    run, summary = motivated_run.run_dir, motivated_run.summary
    test = digits.test.subset(120, seed=0)
    # plain factory + safetensors, nothing from the training run
    fresh = create_model("resnet20", num_classes=10, in_channels=1)
    fresh.load_state_dict(safetensors.torch.load_file(run / "base.safetensors"))
    assert evaluate(fresh, test, digits.mean, digits.std)["accuracy"] == summary["models"]["base"]["accuracy"]
    large, meta = load_model(run / "large.safetensors")
    assert meta["model"] == "resnet32"
    assert (
        evaluate(large, test, meta["extra"]["mean"], meta["extra"]["std"])["accuracy"]
        == summary["models"]["motivated"]["accuracy"]
    )


def test_same_seed_same_run(tmp_path, digits):
    config = TrainConfig(**{**TINY, "epochs": 1})
    a = train(config, tmp_path / "a", progress=False, log=lambda s: None, dataset=digits)
    b = train(config, tmp_path / "b", progress=False, log=lambda s: None, dataset=digits)
    assert (a.run_dir / "steps.jsonl").read_text() == (b.run_dir / "steps.jsonl").read_text()
    wa, wb = (safetensors.torch.load_file(r.run_dir / "base.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_classical_base_and_motivated_base_start_identically(tmp_path, digits):
    # with a condition that never fires, the motivated run's base is the classical base, bit for bit
    config = TrainConfig(**{**TINY, "epochs": 1})
    classical = train(
        TrainConfig(**{**TINY, "epochs": 1, "condition": "never"}),
        tmp_path / "c",
        progress=False,
        log=lambda s: None,
        dataset=digits,
    )
    idle = train(
        TrainConfig(**{**TINY, "epochs": 1, "condition": "random", "p": 0.0}),
        tmp_path / "r",
        progress=False,
        log=lambda s: None,
        dataset=digits,
    )
    wc, wr = (safetensors.torch.load_file(r.run_dir / "base.safetensors") for r in (classical, idle))
    assert all(torch.equal(wc[k], wr[k]) for k in wc)
    assert not (classical.run_dir / "large.safetensors").exists()
    assert config.condition == "decrease"


def test_recalibrated_and_zero_copy_run_reports_what_its_checkpoints_score(tmp_path, digits):
    config = TrainConfig(**{**TINY, "epochs": 1, "k": 1, "bn_recalibrate": 2, "sync": "share"})
    run = train(config, tmp_path / "r", progress=False, log=lambda s: None, dataset=digits)
    test = digits.test.subset(120, seed=0)
    for name in ("base", "motivated"):
        model, _ = load_model(run.run_dir / run.summary["models"][name]["checkpoint"])
        assert evaluate(model, test, digits.mean, digits.std)["accuracy"] == run.summary["models"][name]["accuracy"]
    copied = train(
        TrainConfig(**{**TINY, "epochs": 1, "k": 1, "bn_recalibrate": 2}),
        tmp_path / "c",
        progress=False,
        log=lambda s: None,
        dataset=digits,
    )
    assert (run.run_dir / "steps.jsonl").read_text() == (copied.run_dir / "steps.jsonl").read_text()


def test_evaluating_during_training_does_not_change_training(tmp_path, digits):
    # testing syncs the two models first; that sync must not alter what training does next
    runs = [
        train(
            TrainConfig(**{**TINY, "k": 1, "eval_every_epochs": every}),
            tmp_path / f"e{every}",
            progress=False,
            log=lambda s: None,
            dataset=digits,
        )
        for every in (1, 0)
    ]
    assert (runs[0].run_dir / "steps.jsonl").read_text() == (runs[1].run_dir / "steps.jsonl").read_text()
    assert runs[0].summary["models"] == runs[1].summary["models"]
