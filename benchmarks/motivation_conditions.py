"""Benchmark: the conditions of issue 18 against the paper's rule and the random control, at equal FLOPs.

Every seed trains, with the same data order, schedule and starting weights:

- ``decrease``: the paper's rule (k consecutive decreases), and ``random@decrease``, the random
  control on exactly its count of large-model steps;
- ``budget@decrease``: the budget controller spending exactly the paper's rule's count (so the
  same training FLOPs), placed where the loss falls fastest;
- ``trend`` (the noise-aware slope test) and ``value`` (the bandit on loss drop per FLOP), each with
  its own random control on its own count (``random@trend``, ``random@value``).

The table gives each arm's models (test accuracy and loss for images, validation loss for text),
training FLOPs and p, mean ± std over seeds; then the paired differences at the same seed, with
95% t intervals, of each condition against the arm that spent the same FLOPs.

    python benchmarks/motivation_conditions.py --seeds 0 1 2 3 4 5 6 7 8 9   # digits, the recorded run
    python benchmarks/motivation_conditions.py --seeds 0 --epochs 1            # smoke run
    python benchmarks/motivation_conditions.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --train-subset 10000 --test-subset 2000 --epochs 4 --batch-size 128 --lr 0.1   # CPU-sized CIFAR
    python benchmarks/motivation_conditions.py --data ../shared/datasets/tinyshakespeare.txt \\
        --pair gpt_2l:gpt_4l --epochs 1 --batch-size 32 --optimizer adamw --lr 3e-3 --weight-decay 0.01 \\
        --warmup-epochs 0.1                                                           # Tiny Shakespeare
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import warnings
from pathlib import Path

import torch
from common import config_from, paired, run_arguments, seeds_table

from seeking.flops import FLOPS_CONVENTION
from seeking.io import atomic_write_text
from seeking.reporting.comparison import METRICS
from seeking.training import train
from seeking.training.tasks import preload_data

# (arm, the arm whose count of large-model steps it spends; None: its own condition decides)
ARMS = (
    ("decrease", None),
    ("random@decrease", "decrease"),
    ("budget@decrease", "decrease"),
    ("trend", None),
    ("random@trend", "trend"),
    ("value", None),
    ("random@value", "value"),
)
# (condition, the arm it is measured against at the same FLOPs)
PAIRS = (
    ("decrease", "random@decrease"),
    ("budget@decrease", "random@decrease"),
    ("budget@decrease", "decrease"),
    ("trend", "random@trend"),
    ("value", "random@value"),
)
ROLES = {"base": "base", "large": "motivated"}


def rows_of(arm: str, summary: dict) -> dict[str, dict]:
    """One row per model of a run, keyed ``"<arm> base"`` / ``"<arm> large"``."""
    metric = METRICS[summary["metric"]]
    rows = {}
    for label, role in ROLES.items():
        model = summary["models"][role]
        rows[f"{arm} {label}"] = {
            "arm": f"{arm} {label}",
            "model": model["model"],
            metric.column: model[metric.key],
            **({"test loss": model["loss"]} if metric.key != "loss" else {}),
            "train TFLOPs": summary["train_flops"] / 1e12,
            "p": summary["p"],
            "large steps": summary["motivated_steps"],
            "wall s": summary["train_seconds"],
        }
    return rows


def main() -> None:
    parser = run_arguments(__doc__, epochs=5, train_subset=0, out="bench-conditions")
    parser.set_defaults(data="digits", train_subset=None, test_subset=None, batch_size=64, lr=0.05)
    parser.add_argument("--pair", default="resnet20:resnet32")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--z", type=float, default=2.0)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--optimizer", default="nesterov")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    args = parser.parse_args()

    base, motivated = args.pair.split(":")
    config = config_from(
        args,
        base=base,
        motivated=motivated,
        window=args.window,
        z=args.z,
        epsilon=args.epsilon,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        eval_every_epochs=0,
    )
    dataset = preload_data(config)
    out = Path(args.out)
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        summaries: dict[str, dict] = {}
        for arm, spends in ARMS:
            condition = arm.partition("@")[0]
            arm_config = dataclasses.replace(config, seed=seed, condition=condition)
            if spends is not None:  # exactly the other arm's count: round(p * total) == count
                other = summaries[spends]
                arm_config = dataclasses.replace(
                    arm_config, p=other["motivated_steps"] / (other["steps"] + other["skipped_steps"])
                )
            print(f"=== seed {seed}, {arm}", file=sys.stderr, flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # options the arm's condition does not read
                run = train(
                    arm_config, out / f"seed{seed}" / arm, progress=False, log=lambda line: None, dataset=dataset
                )
            summaries[arm] = run.summary
            if spends is not None and run.summary["motivated_steps"] != summaries[spends]["motivated_steps"]:
                raise SystemExit(f"seed {seed}: {arm} spent another count of large-model steps than {spends}")
        per_seed[seed] = {k: v for arm, s in summaries.items() for k, v in rows_of(arm, s).items()}

    first = per_seed[args.seeds[0]]
    columns = [c for c in next(iter(first.values())) if c != "arm"]
    formats = {"test acc %": ".2f", "test loss": ".4f", "val loss": ".4f", "train TFLOPs": ".3f", "p": ".3f"}
    formats["large steps"] = ".1f"
    table = seeds_table(
        ["arm", *columns], {label: [per_seed[s][label] for s in args.seeds] for label in first}, formats
    )
    metrics = [c for c in ("test acc %", "test loss", "val loss") if c in columns]
    differences = "\n".join(
        f"- {paired(per_seed, f'{a} {label}', f'{b} {label}', column)}"
        for a, b in PAIRS
        for label in ROLES
        for column in metrics
    )
    header = (
        f"{args.pair} on {Path(args.data).name}: {args.epochs} epochs, batch {args.batch_size}, {args.optimizer} "
        f"lr {args.lr} cosine, warmup {args.warmup_epochs} epochs, weight decay {args.weight_decay}, "
        f"train subset {args.train_subset}, test subset {args.test_subset}; decrease k={args.k}, trend window "
        f"{args.window} z {args.z}, budget window {args.window}, value window {args.window} epsilon {args.epsilon}; "
        f"seeds {args.seeds}; mean ± std over seeds (wall: median); torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads. {FLOPS_CONVENTION}."
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
