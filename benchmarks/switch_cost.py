"""Benchmark: the cost of one switch (syncing shared weights) against one training step.

For each pair and sync mode, times ``Motivator.select()`` when the condition has just flipped (the
full switch: shared weights, and the optimizer state under the ``carried`` policy) and one
training step of the base (forward, backward, SGD update) on a CIFAR-shaped batch. Medians over
many repetitions; both are measured in the same run, so their ratio is what to compare.

    python benchmarks/switch_cost.py
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from seeking import ConsecutiveDecrease, Motivator, create_model

SYNCS = ("copy", "share")
DATA = {"num_classes": 10, "in_channels": 3, "image_size": [32, 32]}
VIT = {"patch_size": 4}
# label -> (base, base kwargs, motivated, motivated kwargs)
PAIRS = {
    "resnet20 -> resnet32": ("resnet20", {}, "resnet32", {}),
    "resnet20 -> resnet56": ("resnet20", {}, "resnet56", {}),
    "resnet20 -> resnet32 (width x2)": ("resnet20", {}, "resnet32", {"width": 2}),
    "timm resnet18 -> resnet34": ("resnet18", {}, "resnet34", {}),
    "timm efficientnet_b0 -> b2": ("efficientnet_b0", {}, "efficientnet_b2", {}),
    "timm vit_tiny -> vit_small (patch 4)": ("vit_tiny_patch16_224", VIT, "vit_small_patch16_224", VIT),
}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def train_step(motivator: Motivator, x: torch.Tensor, y: torch.Tensor) -> None:
    model, optimizer = motivator.select()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def switch(motivator: Motivator) -> None:
    motivator.condition.motivated = not motivator.condition.motivated
    motivator.select()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS), metavar="PAIR")
    args = parser.parse_args()

    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}x3x32x32; "
        f"medians over {args.switches} switches and {args.steps} steps"
    )
    print("| pair | sync | optimizer state | aliased tensors | switch ms | base step ms | switch / step |")
    print("|---|---|---|---|---|---|---|")
    for label, state, sync in itertools.product(args.pairs, ("carried", "separate"), SYNCS):
        base_name, base_kwargs, large_name, large_kwargs = PAIRS[label]
        base, large = create_model(base_name, **DATA, **base_kwargs), create_model(large_name, **DATA, **large_kwargs)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (base, large)]
        motivator = Motivator(base, large, ConsecutiveDecrease(2), *optimizers, sync=sync, optimizer_state=state)

        for flag in (True, False):  # give both optimizers state, so the carry has work to do
            motivator.condition.motivated = flag
            train_step(motivator, x, y)
        switch_ms = median_ms(partial(switch, motivator), args.switches)
        motivator.condition.motivated = False
        motivator.select()
        step_ms = median_ms(partial(train_step, motivator, x, y), args.steps)
        aliased = f"{len(motivator.map.aliased)}/{len(motivator.map.entries)}"
        print(
            f"| {label} | {sync} | {state} | {aliased} | {switch_ms:.3f} | {step_ms:.1f} | "
            f"{100 * switch_ms / step_ms:.2f}% |"
        )


if __name__ == "__main__":
    main()
