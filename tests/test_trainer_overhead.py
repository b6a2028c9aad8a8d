"""benchmarks/trainer_overhead.py compares the trainer with a hand-written loop: both must do the same work."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from seeking import TrainConfig

perf_counter = time.perf_counter

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trainer_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    # as the benchmark runs; on a busy 2-core machine, 2 threads can make these tiny steps 40x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(bench, one_thread):
    # 2 epochs of 3 steps: the warmup, the cosine schedule and a new epoch's order all take part
    config = TrainConfig(
        condition="never",
        epochs=2,
        batch_size=32,
        train_subset=100,
        test_subset=20,
        bn_recalibrate=0,
        warmup_epochs=0.5,
        **bench.eval_only_at_end(),
    )
    return bench.Setup.of(config.validate())


def test_plain_loop_ends_on_the_trainers_weights(bench, setup, tmp_path):
    seconds, whole, summary = bench.trainer_run(setup.config, tmp_path / "run")
    assert summary["steps"] == setup.total == 6
    assert 0 < seconds < whole  # the whole call also loads, probes, tests and saves
    _, loop = bench.plain_loop(setup, bench.Extra, tmp_path)
    assert loop.step == 6
    saved = tmp_path / "run" / summary["models"]["base"]["checkpoint"]
    assert bench.weight_difference(loop.model, saved) == 0.0
    # the check can fail: one step fewer leaves other weights
    shorter = bench.Setup.of(TrainConfig(**{**setup.config.to_dict(), "epochs": 1}))
    assert bench.weight_difference(bench.plain_loop(shorter, bench.Extra, tmp_path)[1].model, saved) > 0


def test_the_trainers_extras_do_not_change_what_is_trained(bench, setup, tmp_path):
    _, plain = bench.plain_loop(setup, bench.Extra, tmp_path)
    _, extras = bench.plain_loop(setup, bench.AllExtras, tmp_path)
    for (name, a), b in zip(plain.model.state_dict().items(), extras.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # they did their work: a log line per step, a checkpoint per epoch (the same folder: the last one wins)
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 6
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000000003.pt", "step-000000006.pt"]


def test_the_cpu_clock_leaves_out_waiting_and_is_undone(bench):
    with bench.clock("cpu"):
        start = time.perf_counter()
        time.sleep(0.05)  # waiting: wall time passes, this thread's CPU time hardly does
        waited = time.perf_counter() - start
    assert waited < 0.02
    assert time.perf_counter is perf_counter
