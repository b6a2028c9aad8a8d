"""Benchmark: Motivation on a language model (Tiny Shakespeare, character level), CPU-sized.

Every seed runs all arms of ``seeking compare`` on text (classical base, classical large, the
motivated run, the random control on the motivated run's count of large-model steps) with this
project's dense GPT, the base inside a deeper model (``gpt_2l`` inside ``gpt_4l`` by default: the
added blocks start as the identity). The table gives validation loss (nats per character, on the
same 8 x 64 validation blocks for every arm), perplexity, training FLOPs and p as mean ± std over
seeds; then the paired differences of validation loss between arms at the same seed, with their
95% t intervals (negative: the first arm is better).

    python benchmarks/motivation_text.py                                  # the recorded configuration
    python benchmarks/motivation_text.py --seeds 0 --epochs 1 --batch-size 8   # smoke run
    python benchmarks/motivation_text.py --pair gpt_moe_2l:gpt_moe_4l --excitation zero_sum  # a motivated MoE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch
from common import DEFAULT_DATA, paired, seeds_table

from seeking import TrainConfig
from seeking.flops import FLOPS_CONVENTION
from seeking.io import atomic_write_text
from seeking.reporting.comparison import comparison_columns
from seeking.training.compare import compare

TEXT = DEFAULT_DATA.parent / "tinyshakespeare.txt"
FORMATS = {
    "val loss": ".4f",
    "val ppl": ".3f",
    "train TFLOPs": ".4f",
    "p": ".3f",
    "large steps": ".1f",
    "skipped steps": ".1f",
    "loss drop/TFLOP": "+.3g",
    "FLOPs saving vs large": ".2f",
}
# (first arm, second arm): the paired differences of validation loss reported
PAIRS = (
    ("motivated large", "classical large"),
    ("motivated large", "random-control large"),
    ("motivated base", "classical base"),
    ("motivated base", "random-control base"),
    ("classical large", "classical base"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(TEXT))
    parser.add_argument("--pair", default="gpt_2l:gpt_4l")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="an epoch: as many tokens as the training text")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-epochs", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--excitation", default="none", help="an Excitation strategy for both models (MoE pairs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-motivation-text")
    args = parser.parse_args()

    base, motivated = args.pair.split(":")
    config = TrainConfig(
        data=args.data,
        base=base,
        motivated=motivated,
        model_kwargs={"width": args.width},
        block_size=args.block_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        optimizer="adamw",
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        k=args.k,
        excitation=args.excitation,
    )
    out = Path(args.out)
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        print(f"=== seed {seed}", file=sys.stderr, flush=True)
        result = compare(dataclasses.replace(config, seed=seed), out / f"seed{seed}", random_control=True)
        per_seed[seed] = {row["arm"]: row for row in result["rows"]}

    arms = {arm: [per_seed[s][arm] for s in args.seeds] for arm in per_seed[args.seeds[0]]}
    table = seeds_table(comparison_columns("loss"), arms, FORMATS)
    differences = "\n".join(f"- {paired(per_seed, a, b)}" for a, b in PAIRS)
    steps = per_seed[args.seeds[0]]["classical large"]["large steps"]  # every step of the large model alone
    header = (
        f"{args.pair} (width {args.width}) on {Path(args.data).name}, character level: block {args.block_size}, "
        f"batch {args.batch_size}, {args.epochs} epochs ({steps} steps), "
        f"AdamW lr {args.lr} cosine, warmup {args.warmup_epochs} epochs, weight decay {args.weight_decay}, k={args.k}, "
        f"Excitation {args.excitation}; "
        f"seeds {args.seeds}; mean ± std over seeds (wall: median); torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads. {FLOPS_CONVENTION}."
    )
    print(header)
    print(table)
    print(differences)
    atomic_write_text(out / "benchmark.md", header + "\n\n" + table + "\n\n" + differences + "\n")
    atomic_write_text(
        out / "benchmark.json", json.dumps({"args": vars(args), "per_seed": per_seed}, default=str, indent=1)
    )


if __name__ == "__main__":
    main()
