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
    assert checks["compare"]["arms"] == checks["cifar10_resnet20_in_resnet32"]["arms"]
    assert {"none", "zero_sum"} == set(checks["excite"]["arms"])
    # the trainer vs plain loop benchmark takes --device: it ran on the check's device, and says so
    overhead = checks["trainer_overhead"]
    assert overhead["argv"][-2:] == ["--device", "cpu"] and overhead["ran_on"] == "cpu"
    assert ", device cpu, " in overhead["markdown"]
    assert "largest parameter difference 0 (allowed on cpu: 0)" in overhead["markdown"]
    markdown = (out / "device_check.md").read_text()
    for name, record in checks.items():
        assert f"| {name} | {record['kind']} | {record['status']} |" in markdown
    assert "| classical base | resnet20 |" in markdown  # the comparison's own table
    assert "== train" in (out / "checks.log").read_text()


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
        device_check.Check("hangs", "timing", hangs, 0.2),
        device_check.Check("skips", "cifar", skips, 10),
        device_check.Check("works", "timing", lambda context: {"value": 3}, 10),
    ]
    context = device_check.Context("cpu", False, tmp_path, None, 1, lambda line: None)
    started = time.perf_counter()
    records = device_check.run_checks(context, checks, budget_s=60)
    assert time.perf_counter() - started < 5
    assert [r["status"] for r in records.values()] == ["failed", "timed out", "skipped", "ok"]
    assert records["fails"]["error"] == "RuntimeError: broken on purpose"
    assert 0.2 <= records["hangs"]["seconds"] < 2
    assert records["works"]["value"] == 3
    # a run out of budget times out every check that is left, and says so
    records = device_check.run_checks(context, [checks[1], checks[3]], budget_s=0.1)
    assert [r["status"] for r in records.values()] == ["timed out", "timed out"]
    assert records["works"]["error"] == "no time left in the run's budget"
