"""benchmarks/device_check.py: its --tiny CPU mode runs every check (so the GPU script cannot rot), and
one check's failure or time-out is recorded while the others still run."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:the motivated model resnet32 .* was never trained")  # 2 steps: none motivated
def test_the_tiny_mode_runs_every_check(device_check, tmp_path, monkeypatch):
    monkeypatch.delenv(device_check.COMPILE_BACKEND, raising=False)  # --tiny chooses aot_eager itself
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # trainer_overhead pins 1 for its timings: the checks after it must get 2 back
    try:
        assert device_check.main(["--tiny", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    checks = results["checks"]
    assert list(checks) == list(device_check.CHECKS)
    for name, record in checks.items():
        present = name != "moe_vs_dense" or (SCRIPT.parent / "moe_vs_dense.py").exists()
        assert record["status"] == ("ok" if present else "skipped"), (name, record.get("error"))
    assert checks["train"]["resume_max_difference"] == 0.0  # on the CPU a resumed run is bit for bit
    assert checks["train"]["switches"] >= 1
    cifar = checks["cifar10_resnet20_in_resnet32"]
    assert checks["compare"]["arms"] == cifar["arms"]
    # the figure to pass 85% on the GPU: the classical base's accuracy, as its row in the table says
    assert f"| classical base | resnet20 | {cifar['classical_base_accuracy']:.2f} |" in cifar["markdown"]
    assert {"none", "zero_sum"} == set(checks["excite"]["arms"])
    assert all(ms > 0 for ms in checks["excite"]["optimizer_step_ms"].values())
    assert checks["moe_kernels"]["experts_without_tokens"] >= 4  # the empty groups were checked too
    # the trainer vs plain loop benchmark takes --device: it ran on the check's device, and says so
    overhead = checks["trainer_overhead"]
    assert overhead["argv"][-2:] == ["--device", "cpu"] and overhead["ran_on"] == "cpu"
    assert ", device cpu, " in overhead["markdown"]
    assert "largest parameter difference 0 (allowed on cpu: 0)" in overhead["markdown"]
    assert "| all six |" in checks["moe_vs_dense"]["markdown"]  # its --gemms table
    markdown = (out / "device_check.md").read_text()
    for name, record in checks.items():
        assert f"| {name} | {record['kind']} | {record['status']} |" in markdown
    assert "| classical base | resnet20 |" in markdown  # the comparison's own table
    assert "== train" in (out / "checks.log").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-s", "0"], "--budget-s must be a positive number of seconds, got 0.0"),
        (["--budget-s", "nan"], "--budget-s must be a positive number of seconds, got nan"),
        (["--only", "train", "excite", "train"], "--only names a check more than once: train excite train"),
    ],
)
def test_a_bad_budget_or_a_check_named_twice_is_refused(device_check, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        device_check.main(["--tiny", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failing_or_slow_check_is_recorded_and_the_others_still_run(device_check, tmp_path):
    def fails(context):
        raise RuntimeError("broken on purpose")

    def hangs(context):
        while True:
            time.sleep(0.01)

    def skips(context):
        raise device_check.Skipped("nothing to run here")

    checks = [
        device_check.Check("fails", "smoke", fails, 10),
        device_check.Check("hangs", "timing", hangs, 10),
        device_check.Check("skips", "cifar", skips, 10),
        device_check.Check("works", "timing", lambda context: {"value": 3}, 30),
    ]
    context = device_check.Context("cpu", False, tmp_path, None, 1, lambda line: None)
    started = time.perf_counter()
    records = device_check.run_checks(context, checks, budget_s=1.2)  # hangs must end by 20/60 of 1.2 s
    assert time.perf_counter() - started < 1.2
    assert [r["status"] for r in records.values()] == ["failed", "timed out", "skipped", "ok"]
    assert records["fails"]["error"] == "RuntimeError: broken on purpose"
    assert 0.3 <= records["hangs"]["seconds"] < 0.45  # its box: its own share and what "fails" left
    assert records["works"]["value"] == 3
    # a run out of budget times out every check that is left, and says so
    records = device_check.run_checks(context, [checks[1], checks[3]], budget_s=0.0)
    assert [r["status"] for r in records.values()] == ["timed out", "timed out"]
    assert records["works"]["error"] == "no time left in the run's budget"


def test_each_check_gets_its_share_of_the_budget_and_the_time_the_ones_before_left(device_check, tmp_path):
    def hangs(context):
        while True:
            time.sleep(0.01)

    def quick(context):
        return {}

    def partial(context):  # cut short, it reports what it finished
        try:
            hangs(context)
        except device_check.TimedOut as exc:
            raise device_check.TimedOut(str(exc), {"finished": ["first arm"]}) from None

    context = device_check.Context("cpu", False, tmp_path, None, 1, lambda line: None)
    shares = [("hangs", hangs, 1), ("quick", quick, 1), ("partial", partial, 1), ("last", quick, 1)]
    records = device_check.run_checks(
        context, [device_check.Check(name, "timing", run, share) for name, run, share in shares], budget_s=1.6
    )
    boxes = {name: r["time_box_s"] for name, r in records.items()}
    assert 0.39 <= boxes["hangs"] <= 0.4  # a quarter of the budget
    assert 0.38 <= boxes["quick"] <= 0.4  # the hang cost the next check nothing
    assert 0.75 <= boxes["partial"] <= 0.8  # its quarter and what the quick one left
    assert records["partial"]["status"] == "timed out" and records["partial"]["finished"] == ["first arm"]
    assert 0.35 <= boxes["last"] <= 0.4
    assert sum(entry.share for entry in device_check.CHECKS.values()) <= 8 * 60  # the 8 minutes


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda w1: w1 * 1.1, "grouped_mm and loop differ by more than bfloat16 rounding"),
        (lambda w1: w1 + 1e-3 * w1.sum(), "kernel grouped_mm: an expert that got no token has a nonzero gradient"),
    ],
)
def test_the_moe_kernel_check_fails_on_a_kernel_that_computes_otherwise(
    device_check, tmp_path, monkeypatch, broken, message
):
    from seeking.moe import dispatch

    grouped = dispatch.KERNELS["grouped_mm"]
    monkeypatch.setitem(
        dispatch.KERNELS, "grouped_mm", lambda x, counts, w1, w2, f: grouped(x, counts, broken(w1), w2, f)
    )
    context = device_check.Context("cpu", True, tmp_path, None, 1, lambda line: None)
    with pytest.raises(AssertionError, match=message):
        device_check.smoke_moe_kernels(context)


FAKE_BENCHMARK = """
import argparse, time

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--then", choices=["hang", "exit"])
    args = parser.parse_args()
    for row in range(args.rows):
        print(f"| row {row} |", flush=True)
    while args.then == "hang":
        time.sleep(0.01)
    raise SystemExit("stopped on purpose")
"""


def test_a_benchmark_cut_short_or_exiting_keeps_what_it_printed_and_the_run_goes_on(
    device_check, tmp_path, monkeypatch
):
    (tmp_path / "fake_benchmark_for_device_check.py").write_text(FAKE_BENCHMARK)
    monkeypatch.setattr(device_check, "BENCHMARKS", tmp_path)
    monkeypatch.setattr(device_check, "CHECKS", {})  # benchmark() registers here, not in the real registry
    monkeypatch.delitem(sys.modules, "fake_benchmark_for_device_check", raising=False)  # the one it adds goes too
    script = "fake_benchmark_for_device_check.py"
    device_check.benchmark("hangs", script, tiny=[], full=["--rows", "2", "--then", "hang"], share=1)
    device_check.benchmark("exits", script, tiny=[], full=["--rows", "1", "--then", "exit"], share=1)
    device_check.check("after", "timing", share=1)(lambda context: {"value": 3})
    logged = []
    context = device_check.Context("cpu", False, tmp_path, None, 1, logged.append)
    records = device_check.run_checks(context, list(device_check.CHECKS.values()), budget_s=1.5)
    assert [r["status"] for r in records.values()] == ["timed out", "failed", "ok"]
    # a time-out keeps the rows printed before it (a benchmark prints a row per finished measurement)
    hung = records["hangs"]
    assert hung["argv"] == ["--rows", "2", "--then", "hang", "--device", "cpu"]
    assert "(cut short: the rows it finished)" in hung["markdown"] and "| row 1 |" in hung["markdown"]
    # an exit (argparse's, or the script's own) fails the check instead of ending the whole run
    assert records["exits"]["error"] == f"RuntimeError: {script} exited with 'stopped on purpose'"
    log = "\n".join(logged)
    assert "| row 1 |" in log and "| row 0 |" in log.partition("== exits (")[2]  # both printed, in checks.log
    assert records["after"]["value"] == 3


@pytest.mark.filterwarnings("ignore:the motivated model resnet32 .* was never trained")
def test_an_unfinished_comparison_reports_the_arms_that_finished(device_check, tmp_path):
    from seeking import TrainConfig
    from seeking.training.compare import compare

    config = TrainConfig(data="digits", train_subset=64, test_subset=60, epochs=1, batch_size=32, k=1)
    compare(config, tmp_path, random_control=False, progress=False, log=lambda line: None)
    base = json.loads((tmp_path / "classical_base" / "summary.json").read_text())
    for arm in ("classical_large", "motivated"):
        (tmp_path / arm / "summary.json").unlink()
    finished = device_check.finished_arms(tmp_path)
    assert finished["arms"] == ["classical base"]
    assert finished["classical_base_accuracy"] == base["models"]["base"]["accuracy"]
    assert "| classical base | resnet20 |" in finished["markdown"]
    (tmp_path / "classical_base" / "summary.json").unlink()
    assert device_check.finished_arms(tmp_path) == {}
