"""Two CPU processes (torchrun, gloo, loopback) against one: the same switch decisions and, within
float rounding, the same weights and results; an interrupted 2-process run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import assert_same_run
from safetensors.torch import load_file

from seeking.cli.main import main

# GroupNorm: its output does not depend on how the batch is split (per-rank BatchNorm statistics would)
TRAIN = ["train", "--train-subset", "128", "--test-subset", "60", "--epochs", "2", "--batch-size", "32", "--k", "1"]
TRAIN += ["--lr", "0.01", "--model-kwargs", '{"norm": "group"}', "--quiet"]
EXCITE = ["excite", "--steps", "12", "--eval-every-steps", "6", "--batch-size", "64", "--seeds", "0", "--quiet"]
EXCITE += ["--arms", "zero_sum"]


def torchrun(argv, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*command, "-m", "seeking", *argv], env=env, text=True, **popen)


def run_two(argv):
    proc = torchrun(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def steps(run):
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    assert main([*TRAIN, "--out", str(tmp_path / "one")]) == 0
    out = run_two([*TRAIN, "--out", str(tmp_path / "two")])
    assert out.count("test accuracy") == 2  # rank 0 alone prints (one line per model)
    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [s["model"] for s in one] == [s["model"] for s in two]  # every switch taken at the same step
    assert "motivated" in {s["model"] for s in one} and "base" in {s["model"] for s in one}
    assert [s["loss"] for s in one] == pytest.approx([s["loss"] for s in two], abs=1e-5)
    for name in ("base.safetensors", "large.safetensors"):
        a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_two_processes_excite_like_one_with_global_expert_counts(tmp_path):
    assert main([*EXCITE, "--out", str(tmp_path / "one")]) == 0
    run_two([*EXCITE, "--out", str(tmp_path / "two")])
    (one,), (two,) = (json.loads((tmp_path / d / "excitation.json").read_text())["runs"] for d in ("one", "two"))
    for a, b in zip(one["curve"], two["curve"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["test acc %"] == pytest.approx(b["test acc %"], abs=1e-9)
        assert a["dead_fraction"] == b["dead_fraction"]


def test_an_interrupted_two_process_run_resumes_exactly(tmp_path):
    argv = [*TRAIN, "--epochs", "3", "--checkpoint-every", "2"]
    run_two([*argv, "--out", str(tmp_path / "reference")])
    run = tmp_path / "run"
    proc = torchrun([*argv, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not list((run / "checkpoints").glob("step-*.pt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # torchrun passes it to both workers; they agree on when to stop
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "checkpoint written; continue with: seeking train --resume" in err
    run_two(["train", "--resume", str(run), "--quiet"])
    assert_same_run(tmp_path / "reference", run)
