"""benchmarks/trainer_overhead.py compares the trainer with a hand-written loop: both must do the same work."""

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

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
    seconds, whole, summary = bench.trainer_run(setup, tmp_path / "run")
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


def test_on_a_device_that_queues_work_every_clock_read_waits_for_it(bench, setup, tmp_path, monkeypatch):
    # the CUDA path on the CPU: a device kind that "queues" (a recorded synchronize) and checks 2 steps apart
    steps, waits = [0], []
    queuing = dataclasses.replace(
        bench.DEVICES["cpu"], synchronize=lambda device: waits.append((device.type, steps[0])), check_steps=2
    )
    monkeypatch.setitem(bench.DEVICES, "cpu", queuing)
    handle = register_optimizer_step_post_hook(lambda *args: steps.__setitem__(0, steps[0] + 1))
    try:
        assert bench.difference_after(setup, 2, tmp_path) == 0.0  # the CPU is exact
    finally:
        handle.remove()
    # the trainer (1 epoch of 2 steps): before its call, after its epoch's last optimizer step (inside its
    # step clock), after its call; the plain loop: at its epoch's start and end
    assert waits == [("cpu", 0), ("cpu", 2), ("cpu", 2), ("cpu", 2), ("cpu", 4)]


def run_main(bench, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["trainer_overhead.py", *argv])
    bench.main()


@pytest.mark.parametrize(
    ("argv", "available", "message"),
    [
        (["--device", "cuda"], False, "--device cuda: CUDA is not available here"),
        (["--device", "cuda:1"], True, "--device cuda:1: this machine has 1 CUDA device(s)"),
        (["--device", "cuda", "--clock", "cpu"], True, "--clock cpu does not count the work done on cuda"),
        (["--device", "tpu0"], False, "--device tpu0: not a device this benchmark runs on"),
    ],
)
def test_a_device_that_is_not_here_or_a_clock_that_cannot_time_it_is_refused_before_any_work(
    bench, monkeypatch, capsys, argv, available, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(available))
    monkeypatch.setattr(bench.Setup, "of", None)  # any work would start here
    with pytest.raises(SystemExit) as exit:
        run_main(bench, monkeypatch, *argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
