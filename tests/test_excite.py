"""`seeking excite`: arms that share initial weights and batches, results files, clear errors."""

import json
import math

import pytest
import torch

from seeking.cli.main import main
from seeking.data import ImageData, ImageDataset
from seeking.training.excite import ExciteConfig, build_model, excite_data, run_arm
from seeking.training.tasks import ImageClassification

FAST = ["--steps", "12", "--eval-every-steps", "6", "--batch-size", "64", "--seeds", "0", "1", "--quiet"]


def test_excite_compares_arms_on_the_same_weights_and_batches(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["excite", *FAST, "--arms", "none", "zero_sum", "global", "--out", str(out)]) == 0
    assert "excitation.md" in capsys.readouterr().out
    result = json.loads((out / "excitation.json").read_text())
    runs = {(r["arm"], r["seed"]): r for r in result["runs"]}
    for seed in (0, 1):
        # the global control scales every expert by 1: it must reproduce the plain optimizer exactly
        plain, flat = runs[("none", seed)], runs[("global", seed)]
        assert [c["train_loss"] for c in plain["curve"]] == [c["train_loss"] for c in flat["curve"]]
        assert plain["test acc %"] == flat["test acc %"]
        # zero-sum really changes the updates
        assert runs[("zero_sum", seed)]["train_loss"] != plain["train_loss"]
        assert 0 <= plain["dead_fraction"] <= 1 and plain["load_entropy"] > 0
    rows = {r["arm"]: r for r in result["rows"]}
    assert rows["excitation global"]["test acc % vs plain"] == 0.0
    assert rows["plain optimizer"]["seeds"] == 2 and math.isnan(rows["plain optimizer"]["test acc % vs plain"])
    table = (out / "excitation.md").read_text()
    assert table.startswith("| arm | seeds | skipped steps | test acc % |") and "excitation zero_sum" in table
    assert (out / "excitation.csv").read_text().startswith("arm,seeds,skipped steps,test acc %,test acc % std")


def test_excite_trains_a_gpt_moe_on_a_text_file(tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("to be or not to be, that is the question.\n" * 80, encoding="utf-8")
    small = json.dumps({"depth": 1, "width": 32, "heads": 2, "num_experts": 4})
    argv = ["excite", "--model", "gpt_moe_tiny", "--data", str(text), "--model-kwargs", small, "--block-size", "16"]
    out = tmp_path / "run"
    assert main([*argv, *FAST, "--optimizer", "adam", "--lr", "0.003", "--out", str(out)]) == 0
    runs = json.loads((out / "excitation.json").read_text())["runs"]
    assert {r["arm"] for r in runs} == {"none", "zero_sum", "positive_sum"}
    for r in runs:
        first, last = r["curve"][0]["val loss"], r["curve"][-1]["val loss"]
        assert math.isfinite(last) and last < first < math.log(len(set(text.read_text())) + 1) + 1


def test_excite_amp_trains_under_bfloat16_autocast_and_records_it(tmp_path):
    options = {"steps": 6, "eval_every_steps": 3, "batch_size": 64, "seeds": [0], "arms": ["none"]}
    argv = [f"--{k.replace('_', '-')}={v[0] if isinstance(v, list) else v}" for k, v in options.items()]
    out = tmp_path / "run"
    assert main(["excite", *argv, "--amp", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["amp"] is True
    mixed = [c["train_loss"] for c in json.loads((out / "excitation.json").read_text())["runs"][0]["curve"]]
    config = ExciteConfig(**options).validate()
    plain = [c["train_loss"] for c in run_arm(config, excite_data(config, config.device), "none", 0, print)["curve"]]
    # bfloat16 changes the losses a little, not the training
    assert mixed != plain and mixed == pytest.approx(plain, rel=0.05)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "resnet20"], "has no MoE layer"),
        (["--gamma", "0"], "gamma must be a finite number > 0"),
        (["--arms", "none", "zero-sum"], "unknown strategy 'zero-sum'"),
        (["--model", "gpt_moe_tiny"], "transformers folders) train on a .txt file"),
        (["--model-kwargs", '{"num_classes": 3}'], "must not set num_classes"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--data", "/nonexistent/text.txt"], "no such text file"),
    ],
)
def test_excite_bad_input_exits_2_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["excite", *FAST, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_excite_channels_last_trains_as_the_default_memory_format(tmp_path):
    """--channels-last (through the engine, as for train) changes the memory layout, not the training."""
    small = json.dumps({"depth": 1, "width": 16, "heads": 2, "num_experts": 4, "top_k": 1, "mlp_ratio": 1})
    argv = ["excite", "--model", "vit_moe_tiny", "--model-kwargs", small, "--steps", "4", "--eval-every-steps", "2"]
    argv += ["--batch-size", "32", "--seeds", "0", "--arms", "none", "zero_sum", "--quiet"]
    curves = {}
    for name, extra in (("default", []), ("channels_last", ["--channels-last"])):
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        saved = json.loads((tmp_path / name / "excitation.json").read_text())
        assert saved["config"]["channels_last"] is (name == "channels_last")
        curves[name] = [c["train_loss"] for r in saved["runs"] for c in r["curve"]]
    assert curves["channels_last"] == pytest.approx(curves["default"], rel=1e-5)
    # and it is applied (seen on 3-channel images: on the digits' one channel both layouts are one)
    gen = torch.Generator().manual_seed(0)
    images = [
        ImageData(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(n) % 3)
        for n in (64, 6)
    ]
    dataset = ImageDataset("rgb", *images, ("a", "b", "c"), (0.5,) * 3, (0.3,) * 3, hflip=False)
    config = ExciteConfig(model="vit_moe_tiny", model_kwargs=json.loads(small), batch_size=32, channels_last=True)
    data = ImageClassification.from_config(
        config, torch.device("cpu"), split_seed=0, augmentation=False, progress=False, dataset=dataset
    )
    conv = next(m for m in build_model(config, data, 0, data.device).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x, _ = next(data.batches(0))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class QueuedDevice:
    """A step clock of a device that queues its work (as CUDA's events): each timed stretch's device
    time, 0.25 s, is known only once ``take`` reads it, as the host's own clock never sees it."""

    def __init__(self, device):
        self.pending = []

    def start(self):
        pass

    def stop(self):
        self.pending.append(0.25)

    def take(self):
        seconds, self.pending = sum(self.pending), []
        return seconds


def test_the_optimizer_step_time_is_the_device_clocks_every_step_included(tmp_path, monkeypatch):
    from seeking.training import engine
    from seeking.training.checkpoint import Checkpoints

    monkeypatch.setitem(engine.STEP_CLOCKS, "cpu", QueuedDevice)  # on CUDA: torch.cuda.Event pairs
    config = ExciteConfig(steps=4, eval_every_steps=2, batch_size=32, train_subset=64, seeds=[0]).validate()
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    result = run_arm(config, excite_data(config, "cpu"), "zero_sum", 0, lambda line: None, checkpoints=checkpoints)
    assert result["optimizer_step_ms"] == 250.0  # 4 steps of 0.25 s: the last one's read at the end too
    # the checkpoint of the last step holds its time: a resumed run adds on from the whole count
    assert checkpoints.latest()["progress"]["optimizer_seconds"] == 1.0
