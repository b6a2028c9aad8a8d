"""Benchmark: training throughput with 1 and 2 processes (torchrun, gloo on CPU), and the cost of the
per-step all-reduce that keeps the processes agreed.

Each arm runs the same `seeking train` (global batch fixed) under `torchrun --nproc-per-node N` with
``OMP_NUM_THREADS = cores / N``, so both arms use every core; arms alternate, ``--repeats`` times, and
the table shows the median images per second over training time (``summary.json``). Then, inside a
2-process group, it times the all-reduce of the 3 numbers each step exchanges (loss, gradient norm,
stop flag) and of one MoE layer's expert counts, and reports them against the measured time per step.

    python benchmarks/distributed_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["train", "--train-subset", "1024", "--test-subset", "60", "--epochs", "2", "--batch-size", "128"]
TRAIN += ["--eval-every-epochs", "0", "--quiet"]


def torchrun(nproc: int, argv: list[str]) -> None:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *argv]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def time_allreduce(repeats: int) -> None:
    """Run under torchrun: rank 0 prints the median all-reduce times as JSON."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    results = {}
    for label, size in (("loss, grad norm, stop flag (3 floats)", 3), ("expert counts of one layer (64 floats)", 64)):
        values, times = torch.zeros(size), []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(values)
            times.append(time.perf_counter() - start)
        results[label] = statistics.median(times)
    if dist.get_rank() == 0:
        print(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-kwargs", default='{"norm": "group"}')
    parser.add_argument("--allreduce", action="store_true", help=argparse.SUPPRESS)  # the inner timing run
    args = parser.parse_args()
    if args.allreduce:
        time_allreduce(1000)
        return
    root = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    rates: dict[int, list[float]] = {1: [], 2: []}
    step_seconds: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for nproc in (1, 2):
            out = root / f"n{nproc}-{repeat}"
            torchrun(nproc, ["-m", "seeking", *TRAIN, "--model-kwargs", args.model_kwargs, "--out", str(out)])
            summary = json.loads((out / "summary.json").read_text())
            images = summary["steps"] * summary["batch_shape"][0]
            rates[nproc].append(images / summary["train_seconds"])
            step_seconds[nproc].append(summary["train_seconds"] / summary["steps"])
    print("| processes | threads each | images/s (median) | ms per step | speed-up vs 1 |")
    print("|---|---|---|---|---|")
    one = statistics.median(rates[1])
    for nproc in (1, 2):
        rate = statistics.median(rates[nproc])
        threads = max(1, (os.cpu_count() or 1) // nproc)
        ms = 1000 * statistics.median(step_seconds[nproc])
        print(f"| {nproc} | {threads} | {rate:.0f} | {ms:.1f} | {rate / one:.2f}x |")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            __file__,
            "--allreduce",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    costs = json.loads(proc.stdout.strip().splitlines()[-1])
    step = statistics.median(step_seconds[2])
    print("\n| all-reduce (2 processes, gloo) | median us | share of a 2-process step |")
    print("|---|---|---|")
    for label, seconds in costs.items():
        print(f"| {label} | {1e6 * seconds:.0f} | {100 * seconds / step:.2f}% |")


if __name__ == "__main__":
    main()
