"""Benchmark: the optimizer-state and BatchNorm policies of a motivated run (issue 3 ablation).

Runs the motivated arm alone for each policy, over several seeds, with everything else fixed, and
prints the mean and standard deviation of both models' test accuracy and of p.

    python benchmarks/motivation_policies.py                 # CIFAR-10 (shared data set)
    python benchmarks/motivation_policies.py --data digits --epochs 15 --batch-size 64 --lr 0.05
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from common import config_from, mean_std, run_arguments

from seeking import load_dataset, train
from seeking.io import atomic_write_text

POLICIES = {  # name: (optimizer_state, batchnorm, bn_recalibrate)
    "carried state, separate BN (default)": ("carried", "separate", 0),
    "separate state, separate BN": ("separate", "separate", 0),
    "carried state, shared BN": ("carried", "shared", 0),
    "carried state, separate BN, re-estimated (20 batches)": ("carried", "separate", 20),
}


def main() -> None:
    parser = run_arguments(__doc__, epochs=6, train_subset=5000, out="bench-policies")
    parser.add_argument("--only", default="", help="run only the policies whose label contains this text")
    args = parser.parse_args()

    dataset = load_dataset(args.data, progress=sys.stderr.isatty())
    base_config = config_from(args, eval_every_epochs=0)
    lines = ["| policy | base acc % | motivated acc % | p |", "|---|---|---|---|"]
    for label, (state, batchnorm, recalibrate) in POLICIES.items():
        if args.only not in label:
            continue
        summaries = []
        for seed in args.seeds:
            config = dataclasses.replace(
                base_config, optimizer_state=state, batchnorm=batchnorm, bn_recalibrate=recalibrate, seed=seed
            )
            run_dir = Path(args.out) / f"{state}-{batchnorm}-{recalibrate}" / f"seed{seed}"
            print(f"== {label}, seed {seed}", file=sys.stderr, flush=True)
            summaries.append(train(config, run_dir, progress=False, log=lambda line: None, dataset=dataset).summary)
        base = [s["models"]["base"]["accuracy"] for s in summaries]
        motivated = [s["models"]["motivated"]["accuracy"] for s in summaries]
        lines.append(
            f"| {label} | {mean_std(base)} | {mean_std(motivated)} | {mean_std([s['p'] for s in summaries], '.3f')} |"
        )
    header = (
        f"resnet20 -> resnet32, k={args.k}, {Path(args.data).name}: {args.train_subset} train / "
        f"{args.test_subset} test, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; "
        f"seeds {args.seeds}; mean ± std; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    table = "\n".join(lines)
    print(header)
    print(table)
    atomic_write_text(Path(args.out) / "policies.md", header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
