"""Stress test of resume: kill real `seeking` processes at random moments, resume until they finish,
and check that nothing was lost; then damage checkpoint files at random and check each is refused.

For each job (motivated runs with copy or zero-copy sharing, a classical run, a comparison, an
Excitation experiment on images and one on text) it runs the job once uninterrupted, then ``--kills``
times: start it, SIGKILL it after a random delay, resume it (the resumed process may be killed again,
with probability 1/2, at a random moment) until it completes, and compare the result folder with the
uninterrupted one: bit-identical weights, same logs and results apart from timings
(``run_differences`` of tests/helpers.py). Then it damages ``--corruptions`` copies of
checkpoints at random (truncation, one flipped bit, a run of random bytes, an empty file) and checks
that each fails to load with a ``CheckpointError``, never loads silently.

    python benchmarks/resume_stress.py --kills 10 --corruptions 200
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seeking.errors import CheckpointError
from seeking.training.checkpoint import load_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' run comparison
from helpers import run_differences

TINY = ["--train-subset", "384", "--test-subset", "60", "--batch-size", "32", "--k", "1", "--checkpoint-every", "5"]
EXCITE = ["excite", "--steps", "60", "--eval-every-steps", "10", "--batch-size", "64", "--seeds", "0", "1"]
EXCITE += ["--checkpoint-every", "3", "--arms", "none", "zero_sum"]
TEXT_MODEL = '{"depth": 1, "width": 32, "heads": 2, "num_experts": 4}'
JOBS = {
    "train, motivated (copy)": ["train", *TINY, "--epochs", "6"],
    "train, motivated (share, shared BN)": [
        "train",
        *TINY,
        "--epochs",
        "6",
        "--sync",
        "share",
        "--batchnorm",
        "shared",
    ],
    "train, classical large": ["train", *TINY, "--epochs", "6", "--condition", "always"],
    "compare (4 arms)": ["compare", *TINY, "--epochs", "2"],
    "excite, Micro-MoE on digits": EXCITE,
    "excite, GPT-MoE on text": [*EXCITE, "--model", "gpt_moe_tiny", "--model-kwargs", TEXT_MODEL, "--data", "{text}"],
}


def seeking(argv: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "seeking", *argv, "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, kill_after: float | None) -> bool:
    """Wait for ``proc``; SIGKILL it after ``kill_after`` seconds. True if it was killed."""
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.args[2:])} exited with code {proc.returncode}: {proc.stderr.read()}")
    return False


def complete(out: Path) -> bool:
    return any((out / name).exists() for name in ("summary.json", "comparison.json", "excitation.json"))


def damage(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip a bit", "random bytes", "empty"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "flip a bit":
        i = rng.randrange(len(data))
        return kind, data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if kind == "random bytes":
        i, n = rng.randrange(len(data)), rng.randint(1, 64)
        return kind, data[:i] + rng.randbytes(n) + data[i + n :]
    return kind, b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="interrupted runs per job")
    parser.add_argument("--corruptions", type=int, default=200, help="damaged checkpoint files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="resume-stress-"))
    text = root / "sonnet.txt"
    text.write_text("shall i compare thee to a summer's day? thou art more lovely and more temperate.\n" * 40)
    checkpoints = []
    print("| job | runs | kills | resumes | kills landed mid-run | identical to uninterrupted | wall s (one run) |")
    print("|---|---|---|---|---|---|---|")
    for j, name in enumerate(args.jobs):
        argv = [a.replace("{text}", str(text)) for a in JOBS[name]]
        reference = root / f"job{j}-reference"
        start = time.perf_counter()
        finish(seeking([*argv, "--out", str(reference)]), None)
        wall = time.perf_counter() - start
        kills = resumes = landed = identical = 0
        for trial in range(args.kills):
            out = root / f"job{j}-trial{trial}"
            killed = finish(seeking([*argv, "--out", str(out)]), rng.uniform(0.2, 1.0) * wall)
            kills += 1
            landed += killed
            while killed and not complete(out):  # a kill can land after the results were written
                resumes += 1
                again = rng.random() < 0.5
                # killed before the run folder had its config: nothing to resume, start it again
                command = (
                    [argv[0], "--resume", str(out)] if (out / "config.json").exists() else [*argv, "--out", str(out)]
                )
                killed = finish(seeking(command), rng.uniform(0.2, 1.0) * wall if again else None)
                kills += again
            differences = run_differences(reference, out)
            identical += not differences
            if differences:
                print(f"  {name}, trial {trial}: {differences}", file=sys.stderr)
            if trial == 0:  # its checkpoints are damaged below; the other folders only cost disk
                checkpoints += list(out.rglob("step-*.pt"))
            else:
                shutil.rmtree(out)
        print(f"| {name} | {args.kills} | {kills} | {resumes} | {landed} | {identical}/{args.kills} | {wall:.1f} |")

    tried, refused, kinds = 0, 0, {}
    while tried < args.corruptions:
        source = rng.choice(checkpoints)
        kind, data = damage(source.read_bytes(), rng)
        if data == source.read_bytes():  # random bytes equal to those they replace
            continue
        tried += 1
        target = root / "damaged.pt"
        target.write_bytes(data)
        try:
            load_state(target)
        except CheckpointError:
            refused += 1
            kinds[kind] = kinds.get(kind, 0) + 1
        else:
            print(f"  a damaged checkpoint ({kind}) loaded without error", file=sys.stderr)
    print(f"\n{refused}/{tried} damaged checkpoint files refused with CheckpointError ({kinds})")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
