"""Recount the FLOPs of the motivation tables in docs/RESULTS.md under the corrected counter.

Until issue 12 the runs counted FLOPs with torch's stock ``FlopCounterMode``, whose weight-gradient
term for grouped and depthwise convolutions is ``groups`` times too large. Every step of a run is
charged the per-step count of the model that stepped, so a recorded total is
``stock_base * base_steps + stock_large * large_steps``. This script, per table:

1. counts one training step of each model both ways, stock and corrected
   (:func:`seeking.training.train_step_flops`), on meta tensors (shapes only, no arithmetic) of the
   run's batch shape;
2. recovers the step counts from the recorded totals: the classical arms' from their totals, the
   motivated run's large-model steps from ``total = stock_base * (steps - m) + stock_large * m``,
   and refuses (exit 1) unless each recorded total is reproduced within its printed rounding;
3. prints the corrected totals, ACC/FLOPs and FLOPs saving beside the recorded ones.

Accuracies and wall times do not change: only the FLOP count was wrong, not the training.

    python benchmarks/flops_recount.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from seeking.data import load_dataset
from seeking.models import create_model
from seeking.training import train_step_flops


@dataclass(frozen=True)
class Table:
    """One RESULTS.md table: the pair, its batch shape, and the recorded (TFLOPs, accuracy) per arm."""

    section: str
    base: str
    large: str
    batch: tuple[int, int, int, int]
    # arm -> recorded train TFLOPs (only needed where the count changes)
    tflops: dict[str, float]
    # row -> (arm, test accuracy %): what ACC/FLOPs and the saving are computed for
    accuracy: dict[str, tuple[str, float]]


TABLES = [
    Table(
        "EfficientNet-B0 inside EfficientNet-B2 on CIFAR-10 at 32x32 (issue 3)",
        "efficientnet_b0",
        "efficientnet_b2",
        (128, 3, 32, 32),
        {"classical base": 13.188, "classical large": 23.521, "motivated": 14.712},
        {
            "classical base": ("classical base", 27.95),
            "classical large": ("classical large", 23.90),
            "motivated base": ("motivated", 25.00),
            "motivated large": ("motivated", 9.65),
            "motivated large, --bn-recalibrate 20": ("motivated", 24.30),
        },
    ),
    Table(
        "Motivation training on CIFAR-10: ResNet-20 base inside ResNet-32 (issue 2)",
        "resnet20",
        "resnet32",
        (128, 3, 32, 32),
        {},
        {},
    ),
    Table(
        "The demo setting: digits, ResNet-20 inside ResNet-32 (issue 2)",
        "resnet20",
        "resnet32",
        (64, *load_dataset("digits").train.images.shape[1:]),
        {},
        {},
    ),
]


def stock_step_flops(model: torch.nn.Module, inputs: torch.Tensor, num_classes: int) -> int:
    """The count the runs recorded: torch's own formulas, the same step as ``train_step_flops``."""
    y = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(torch.zeros_like(inputs)), y).backward()
    return counter.get_total_flops()


def steps_from(total_tflops: float, per_step: dict[str, int], steps: int | None = None) -> dict[str, int]:
    """Steps of each model that reproduce ``total_tflops`` (printed to 3 decimals): one model alone,
    or ``steps`` split between two."""
    tolerance = 0.0005e12
    if steps is None:
        (name, flops), *_ = per_step.items()
        found = {name: round(total_tflops * 1e12 / flops)}
    else:
        base, large = per_step.values()
        m = round((total_tflops * 1e12 - base * steps) / (large - base))
        found = dict(zip(per_step, (steps - m, m), strict=True))
    recount = sum(per_step[n] * s for n, s in found.items())
    if abs(recount - total_tflops * 1e12) > tolerance:
        sys.exit(f"no step count reproduces {total_tflops} TFLOPs from per-step {per_step} (best {found})")
    return found


def recount(table: Table) -> None:
    data = {"num_classes": 10, "in_channels": table.batch[1], "image_size": list(table.batch[2:])}
    inputs = torch.zeros(table.batch, device="meta")
    stock, new = {}, {}
    for name in (table.base, table.large):
        model = create_model(name, **data).to("meta").train()
        stock[name], new[name] = stock_step_flops(model, inputs, 10), train_step_flops(model, inputs, 10)
    print(f"## {table.section}\n\nbatch {table.batch}; one training step, GFLOPs:\n")
    print("| model | stock FlopCounterMode (recorded) | corrected | stock / corrected |\n|---|---|---|---|")
    for name in stock:
        print(f"| {name} | {stock[name] / 1e9:.3f} | {new[name] / 1e9:.3f} | {stock[name] / new[name]:.2f}x |")
    if stock == new:
        print("\nUnchanged: every recorded FLOP figure of this table stands.\n")
        return
    steps = {
        "classical base": steps_from(table.tflops["classical base"], {table.base: stock[table.base]}),
        "classical large": steps_from(table.tflops["classical large"], {table.large: stock[table.large]}),
    }
    total_steps = steps["classical base"][table.base]
    steps["motivated"] = steps_from(table.tflops["motivated"], stock, total_steps)
    corrected = {arm: sum(new[n] * s for n, s in st.items()) / 1e12 for arm, st in steps.items()}
    print(f"\nsteps recovered from the recorded totals: {steps}\n")
    ref_arm, ref_acc = table.accuracy["classical base"]
    print("| row | train TFLOPs: recorded -> corrected | ACC/FLOPs: recorded -> corrected | saving vs large |")
    print("|---|---|---|---|")
    for row, (arm, acc) in table.accuracy.items():
        cells = []
        for flops in (table.tflops, corrected):
            slope = "-" if arm == ref_arm else f"{(acc - ref_acc) / (flops[arm] - flops[ref_arm]):+.3g}"
            cells.append((f"{flops[arm]:.3f}", slope, f"{flops['classical large'] / flops[arm]:.2f}x"))
        (t0, a0, s0), (t1, a1, s1) = cells
        print(f"| {row} | {t0} -> {t1} | {a0} -> {a1} | {s0} -> {s1} |")
    print()


def attention_gap(batch: int = 8) -> None:
    """A timm ViT on real CPU tensors, fused attention on (the CPU flash kernel) and off (the math path)."""
    print(f"## timm vit_tiny (patch 4) at 32x32 on the CPU, batch {batch}: one training step, GFLOPs\n")
    print("| attention | stock FlopCounterMode | corrected |\n|---|---|---|")
    inputs = torch.zeros(batch, 3, 32, 32)
    model = create_model("vit_tiny_patch16_224", num_classes=10, image_size=[32, 32], patch_size=4)
    for fused in (True, False):
        for block in model.blocks:
            block.attn.fused_attn = fused
        stock, new = stock_step_flops(model, inputs, 10), train_step_flops(model, inputs, 10)
        print(f"| {'fused (default)' if fused else 'math'} | {stock / 1e9:.3f} | {new / 1e9:.3f} |")
    print()


def main() -> None:
    for table in TABLES:
        recount(table)
    attention_gap()


if __name__ == "__main__":
    main()
