"""``--compile``: train, compare and excite through torch.compile end equal to eager runs within rounding,
compile each model once however often a Motivation switch changes model, keep the checkpoint format
and resume exactly; MoE routing counts stay exact. Most tests use the ``aot_eager`` backend (torch's
tracing and autograd graphs without code generation: seconds instead of a C++ build per graph); one
test runs the default ``inductor`` backend."""

import copy
import json

import pytest
import safetensors
import torch
import torch.nn.functional as F
from helpers import Crash, assert_same_run, crash_at
from torch import nn

from seeking import TrainConfig, train
from seeking.cli.main import main
from seeking.errors import ConfigError
from seeking.training.config import ExciteConfig
from seeking.training.engine import COMPILE_BACKEND, compiled_loss

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(progress=False, log=lambda line: None)
# 4 steps per epoch, 8 in all; the random condition switches between the models at about half the steps
TINY = dict(train_subset=128, test_subset=60, epochs=2, batch_size=32, bn_recalibrate=2, checkpoint_every=3)
PAIR = dict(condition="random", p=0.5)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND, "aot_eager")
    torch._dynamo.reset()  # graphs of earlier tests do not count here
    torch._dynamo.utils.counters.clear()


def weights(run_dir):
    """Every saved model's tensors, by file and name."""
    out = {}
    for path in sorted(run_dir.rglob("*.safetensors")):
        with safetensors.safe_open(path, "pt") as f:
            out |= {f"{path.relative_to(run_dir)}:{k}": f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return out


def assert_close_runs(eager, compiled, atol):
    a, b = weights(eager), weights(compiled)
    assert a.keys() == b.keys() and a  # the same files and names: no "_orig_mod." prefix
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=atol, msg=lambda m, key=key: f"{key}: {m}")


@pytest.fixture(scope="module")
def eager_pair(tmp_path_factory):
    return train(TrainConfig(**TINY, **PAIR), tmp_path_factory.mktemp("eager") / "run", **QUIET)


def test_a_compiled_pair_trains_as_eager_and_compiles_each_model_once(eager_pair, aot_eager, tmp_path, inject):
    run = train(TrainConfig(**TINY, **PAIR, compile=True), tmp_path / "run", **QUIET)
    # same switches (the random condition's draws), same losses within rounding, same weights
    for key in ("steps", "motivated_steps", "switches"):
        assert run.summary[key] == eager_pair.summary[key]
    assert run.summary["switches"] >= 3
    assert_close_runs(eager_pair.run_dir, run.run_dir, atol=1e-4)
    # one graph per model although the step changed model at every switch
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    # a compiled run dies and resumes bit for bit like the uninterrupted compiled run
    inject(crash_at(4))
    with pytest.raises(Crash):
        train(TrainConfig(**TINY, **PAIR, compile=True), tmp_path / "resumed", **QUIET)
    inject.undo()
    train(TrainConfig(**TINY, **PAIR, compile=True), tmp_path / "resumed", resume=True, **QUIET)
    assert_same_run(run.run_dir, tmp_path / "resumed")


def test_compile_with_zero_copy_sharing_channels_last_and_amp(aot_eager, tmp_path):
    # shared weights are views of the large model's: both compiled models must see each other's updates
    options = dict(**TINY, **PAIR, sync="share", channels_last=True, amp=True)
    eager = train(TrainConfig(**options), tmp_path / "eager", **QUIET)
    compiled = train(TrainConfig(**options, compile=True), tmp_path / "compiled", **QUIET)
    assert compiled.summary["switches"] == eager.summary["switches"] >= 3
    assert_close_runs(eager.run_dir, compiled.run_dir, atol=2e-2)  # bfloat16 forward: rounding at 1e-2


def test_compiled_excitation_keeps_routing_counts_exact(aot_eager, tmp_path):
    """The counts that Excitation reads are recorded in eager code between compiled graphs: the factors
    (from the counts) and utilization of every evaluation equal the eager run's."""
    argv = ["excite", "--steps", "6", "--eval-every-steps", "3", "--batch-size", "64", "--seeds", "0", "--quiet"]
    argv += ["--arms", "none", "zero_sum"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "excitation.json").read_text())["runs"]
    for eager, compiled in zip(runs["eager"], runs["compiled"], strict=True):
        for a, b in zip(eager["curve"], compiled["curve"], strict=True):
            assert b["utilization"] == a["utilization"]
            assert (a["phi"] is None) == (b["phi"] is None)
            if a["phi"] is not None:
                torch.testing.assert_close(torch.tensor(b["phi"]), torch.tensor(a["phi"]), atol=1e-5, rtol=1e-5)
            assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)


def test_compiled_compare_equals_eager(aot_eager, tmp_path):
    argv = ["compare", "--train-subset", "128", "--test-subset", "60", "--epochs", "1", "--batch-size", "32"]
    argv += ["--k", "1", "--bn-recalibrate", "2", "--no-random-control", "--quiet"]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
    rows = [json.loads((tmp_path / d / "comparison.json").read_text())["rows"] for d in ("eager", "compiled")]
    assert [r["arm"] for r in rows[1]] == [r["arm"] for r in rows[0]]
    for arm in ("classical_base", "classical_large", "motivated"):  # the same plan: steps of each model
        summaries = [json.loads((tmp_path / d / arm / "summary.json").read_text()) for d in ("eager", "compiled")]
        assert [s["motivated_steps"] for s in summaries[1:]] == [summaries[0]["motivated_steps"]]
    assert_close_runs(tmp_path / "eager", tmp_path / "compiled", atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # three arms, two architectures


def test_inductor_gives_eager_gradients(monkeypatch):
    """The default backend, generating C++ for the CPU (a small model: each graph is a gcc build), on the
    engine's compiled loss: the loss and every gradient equal eager's within rounding. (Over several
    training steps at this learning rate, rounding differences grow to 1e-3 in ResNet-20's weights.)"""
    monkeypatch.delenv(COMPILE_BACKEND, raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def loss(net, model, x, y):
        value = F.cross_entropy(net(x), y)
        return value, value

    runs = []
    for function, net in ((loss, model), (compiled_loss(loss), copy.deepcopy(model))):
        reported, minimised = function(net, net, x, y)
        minimised.backward()
        runs.append((reported.detach(), {k: p.grad for k, p in net.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = runs
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys()
    for key, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[key], grad, atol=1e-5, rtol=1e-5)


def test_an_unknown_backend_is_refused_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(COMPILE_BACKEND, "no_such_backend")
    with pytest.raises(ConfigError, match="no_such_backend"):
        ExciteConfig(compile=True).validate()
    assert main(["train", "--compile", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "torch.compile backend 'no_such_backend'" in error
    # the backends offered: torch's own, less its test backends (which fail on purpose)
    assert "choose one of: aot_eager, " in error and "inductor" in error and "TESTING_ONLY" not in error
    assert not (tmp_path / "run").exists()
    ExciteConfig().validate()  # the variable does nothing without --compile


@torch._dynamo.register_backend(name="seeking_test_cannot_compile")
def _cannot_compile(graph, example_inputs):
    """A backend that compiles nothing, as inductor without a C++ compiler."""
    raise RuntimeError("no compiler here")


@torch._dynamo.register_backend(name="seeking_test_no_convolutions")
def _no_convolutions(graph, example_inputs):
    """A backend that compiles small graphs but not a model's convolutions, as one missing an operation."""
    if any("conv" in str(node.target) for node in graph.graph.nodes):
        raise RuntimeError("convolution is not supported")
    return graph.forward


@pytest.mark.parametrize("command", ["train", "compare", "excite"])
def test_a_backend_that_cannot_compile_is_refused_before_anything_is_written(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(COMPILE_BACKEND, "seeking_test_cannot_compile")
    tiny = ["--steps", "2"] if command == "excite" else ["--train-subset", "64", "--epochs", "1"]
    assert main([command, "--compile", *tiny, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "backend 'seeking_test_cannot_compile' cannot compile on cpu: RuntimeError: no compiler here" in error
    assert "run without --compile" in error and error.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_model_the_backend_cannot_compile_stops_at_its_first_step_and_resumes_cleanly(monkeypatch, tmp_path, capsys):
    """Only the model's own graph shows this, at its first step: the folder is written by then, so the
    message names the command that continues the run once the backend works; that command then finishes it."""
    torch._dynamo.reset()  # no graph compiled by another backend is reused
    monkeypatch.setenv(COMPILE_BACKEND, "seeking_test_no_convolutions")
    out = tmp_path / "run"
    argv = ["--train-subset", "64", "--test-subset", "20", "--epochs", "1", "--bn-recalibrate", "0", "--quiet"]
    assert main(["train", "--compile", *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "could not compile the training step: RuntimeError: convolution is not supported;" in error
    assert f"continue it with seeking train --resume {out} once the backend works" in error
    assert (out / "INCOMPLETE").exists() and not (out / "summary.json").exists()
    monkeypatch.setenv(COMPILE_BACKEND, "aot_eager")
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 1 and not (out / "INCOMPLETE").exists()


def test_a_compiled_stacked_moe_layer_equals_eager(aot_eager):
    """Traced on the CPU, stacked experts take the loop kernel (torch's meta kernel of _grouped_mm takes
    only 16-bit floats): the compiled layer trains as the eager one, counts included."""
    from seeking.moe import MoEFeedForward

    torch.manual_seed(0)
    eager = MoEFeedForward(16, 32, 4, 2)
    compiled = copy.deepcopy(eager)
    x = torch.randn(2, 8, 16)
    outputs = []
    for layer, call in ((eager, eager), (compiled, torch.compile(compiled, backend="aot_eager"))):
        out = call(x)
        out.sum().backward()
        outputs.append((out, layer.w1.grad, layer.w2.grad, layer.expert_counts.clone()))
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
