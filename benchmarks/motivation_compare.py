"""Benchmark: the motivation comparison over several seeds (CIFAR-10 by default).

Every seed runs all arms of ``seeking compare`` (classical base, classical large, motivated run,
random control on the motivated run's count of large-model steps) with the same data subset, order
and schedule; the table gives mean and standard deviation over seeds, then each arm's paired
difference to its classical twin (and to the random control) with its 95% t interval. Accuracy,
p, FLOPs and the paper's ACC/FLOPs are per arm; wall times are medians (the machine is shared, so
compare arms by their ratio).

    python benchmarks/motivation_compare.py                      # CIFAR-10, the recorded configuration
    python benchmarks/motivation_compare.py --data digits --epochs 15 --batch-size 64 --lr 0.05  # the demo's setting
    python benchmarks/motivation_compare.py --seeds 0 --epochs 1 --train-subset 1000   # smoke run
    python benchmarks/motivation_compare.py --data digits --pair resnet20:resnet32:resnet56 --epochs 4  # a chain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch
from common import config_from, paired_lines, run_arguments, seeds_table

from seeking.flops import FLOPS_CONVENTION
from seeking.io import atomic_write_text
from seeking.reporting.comparison import paired_arms
from seeking.training.compare import compare

FORMATS = {
    "test acc %": ".2f",
    "train TFLOPs": ".3f",
    "p": ".3f",
    "large steps": ".1f",
    "level p": ".3f",  # a chain's rows: their own level's share and count of steps
    "level steps": ".1f",
    "skipped steps": ".1f",
    "ACC/FLOPs (pts/TFLOP)": "+.3g",
    "FLOPs saving vs large": ".2f",
}


def main() -> None:
    parser = run_arguments(__doc__, epochs=10, train_subset=10000, out="bench-motivation")
    parser.add_argument("--pair", default="resnet20:resnet32", help="BASE:MOTIVATED, or BASE:...:MOTIVATED for a chain")
    parser.add_argument("--optimizer-state", default="carried")
    parser.add_argument("--batchnorm", default="separate")
    parser.add_argument("--eval-every-epochs", type=int, default=5)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    names = args.pair.split(":")
    config = config_from(
        args,
        base=names[0],
        intermediate=names[1:-1],
        motivated=names[-1],
        eval_every_epochs=args.eval_every_epochs,
        optimizer_state=args.optimizer_state,
        batchnorm=args.batchnorm,
        channels_last=args.channels_last,
    )
    out = Path(args.out)
    per_seed, chains = {}, []
    for seed in args.seeds:
        print(f"=== seed {seed}", file=sys.stderr, flush=True)
        # a chain has no random control (docs/MOTIVATION.md, "Chains of models")
        result = compare(dataclasses.replace(config, seed=seed), out / f"seed{seed}", random_control=len(names) == 2)
        per_seed[seed] = result["rows"]
        chains += [f"seed {seed}: {result['chain']}"] if "chain" in result else []

    arms = {row["arm"]: [per_seed[s][i] for s in args.seeds] for i, row in enumerate(per_seed[args.seeds[0]])}
    table = seeds_table(list(per_seed[args.seeds[0]][0]), arms, FORMATS)
    accuracy = {arm: {s: r["test acc %"] for s, r in zip(args.seeds, rows, strict=True)} for arm, rows in arms.items()}
    table += "\n\nTest accuracy, paired by seed (95% t interval):\n\n" + paired_lines(accuracy, paired_arms(list(arms)))
    header = (
        f"{args.pair} on {Path(args.data).name}: {args.train_subset} train / {args.test_subset} test images, "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr} cosine, k={args.k}, "
        f"optimizer state {args.optimizer_state}, BN {args.batchnorm}; seeds {args.seeds}; "
        f"mean ± std over seeds (wall: median); torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads. {FLOPS_CONVENTION}."
    )
    table += "".join(f"\n\n{line}" for line in chains)
    print(header)
    print(table)
    atomic_write_text(out / "benchmark.md", header + "\n\n" + table + "\n")
    atomic_write_text(
        out / "benchmark.json", json.dumps({"args": vars(args), "per_seed": per_seed}, default=str, indent=1)
    )


if __name__ == "__main__":
    main()
