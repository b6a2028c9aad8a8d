"""Benchmark: Excitation against the plain optimizer on the paper's settings, CPU-sized.

Each experiment runs ``seeking excite`` (every arm from the same initial weights, on the same
batches, for each seed) and prints its table (mean ± std over seeds, and the paired difference to
the plain optimizer with its 95% t interval), then the test metric at each evaluation step
averaged over seeds (the curves).

    python benchmarks/excitation_compare.py                          # every experiment
    python benchmarks/excitation_compare.py --only micro_moe_sgd     # one
    python benchmarks/excitation_compare.py --seeds 0 --scale 0.1    # smoke run: a tenth of the steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import DEFAULT_DATA

from seeking.training.excite import ExciteConfig, compare_excitation

TEXT = DEFAULT_DATA.parent / "tinyshakespeare.txt"
CONTROLS = ["none", "zero_sum", "positive_sum", "global", "random", "inverted"]
# the language-model experiments' shared settings
TEXT_SETTINGS = dict(
    data=str(TEXT), optimizer="adamw", lr=1e-3, batch_size=32, block_size=64, arms=["none", "zero_sum", "positive_sum"]
)
# name -> ExciteConfig fields (data and seeds come from the command line)
EXPERIMENTS = {
    # Micro-MoE 4x128, 90% sparsity: the paper's 41.01 -> 46.58 (SGD, batch 512)
    "micro_moe_sgd": dict(model="micro_moe", optimizer="sgd", lr=0.05, batch_size=512, steps=1000, arms=CONTROLS),
    "micro_moe_adam": dict(model="micro_moe", optimizer="adam", lr=1e-3, batch_size=512, steps=1000, arms=CONTROLS),
    # structural confusion: deep sparse MLPs without skips
    "confusion_sgd10": dict(model="sparse_mlp_deep10", optimizer="sgd", lr=0.05, batch_size=512, steps=1000),
    "confusion_adam20": dict(model="sparse_mlp_deep20", optimizer="adam", lr=1e-3, batch_size=512, steps=1000),
    # ViT-MoE: 64 experts, 4 layers, width 128, top-2, load-balancing loss on (the model's default)
    "vit_moe": dict(
        model="vit_moe_tiny",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        batch_size=64,
        steps=100,
        eval_every_steps=25,
        train_subset=10000,
        test_subset=1000,
    ),
    # GPT-MoE, character level: validation loss at equal steps
    "gpt_moe": dict(model="gpt_moe_tiny", **TEXT_SETTINGS, steps=200, eval_every_steps=50),
    # a Hugging Face transformers OLMoE (tiny random-init configuration), made excitable in place
    "hf_olmoe": dict(model="hf_olmoe_tiny", **TEXT_SETTINGS, steps=300, eval_every_steps=100),
}


def curves(result: dict, metric: str) -> str:
    """Metric at each evaluation step, mean over seeds, one column per arm."""
    arms = list(dict.fromkeys(r["arm"] for r in result))
    steps = [c["step"] for c in result[0]["curve"]]
    lines = ["| step | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for i, step in enumerate(steps):
        cells = [statistics.fmean(r["curve"][i][metric] for r in result if r["arm"] == a) for a in arms]
        lines.append(f"| {step} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="image data for the image experiments")
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every experiment's steps")
    parser.add_argument("--out", default=f"runs/excitation-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}, seeds {args.seeds}")
    for name in args.only:
        defaults = {"data": args.data, "seeds": args.seeds, "eval_every_steps": 250}
        if "data" not in EXPERIMENTS[name]:  # the image experiments: a test subset (text has no such option)
            defaults["test_subset"] = 2000
        fields = {**defaults, "arms": ["none", "zero_sum"], **EXPERIMENTS[name]}
        fields["steps"] = max(1, round(fields["steps"] * args.scale))
        fields["eval_every_steps"] = max(1, min(fields["eval_every_steps"], fields["steps"]))
        config = ExciteConfig(**fields)
        print(f"\n## {name}: {config}", flush=True)
        start = time.perf_counter()
        result = compare_excitation(config, Path(args.out) / name, log=lambda line: print(line, flush=True))
        print(result["table"])
        print(f"\ncurves ({result['metric']}, mean over seeds):\n{curves(result['runs'], result['metric'])}")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
