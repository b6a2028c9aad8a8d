"""Benchmark: the optimizer step with and without Excitation, at 8, 64 and 256 experts.

One MoE feed-forward layer (width 128, expert hidden 256, top-2) with stacked or list experts.
Times ``optimizer.step()`` alone (the part Excitation changes; the counts of a real forward are in
place), and a whole training step of the layer (forward, backward, optimizer step) on the same
tokens; medians over many steps, plain and wrapped in the same run.

    python benchmarks/excitation_overhead.py
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from seeking.excitation import Excitation
from seeking.moe import MoEFeedForward

OPTIMIZERS = {
    "sgd+momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


def median_ms(layer: MoEFeedForward, make, wrapped: bool, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ms of ``optimizer.step()`` alone and of a whole training step."""
    optimizer = make(layer.parameters())
    if wrapped:
        optimizer = Excitation(optimizer, layer, "zero_sum")
    layer(x).square().mean().backward()  # gradients and counts stay in place for the optimizer steps
    counts = layer.expert_counts.clone()
    step_times, train_times = [], []
    for _ in range(repeats + 3):
        layer.expert_counts.copy_(counts)
        start = time.perf_counter()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
    for _ in range(repeats + 3):
        start = time.perf_counter()
        optimizer.zero_grad()
        layer(x).square().mean().backward()
        optimizer.step()
        train_times.append(time.perf_counter() - start)
    return 1000 * statistics.median(step_times[3:]), 1000 * statistics.median(train_times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median optimizer.step() over {args.repeats}")
    print(
        "| experts | storage | optimizer | expert params | optimizer step ms: plain | excitation | overhead "
        "| training step ms: plain | excitation | overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for experts, storage, name in itertools.product(args.experts, ("stacked", "list"), OPTIMIZERS):
        torch.manual_seed(0)
        layer = MoEFeedForward(128, 256, experts, 2, storage=storage)
        x = torch.randn(args.tokens, 128)
        plain = median_ms(layer, OPTIMIZERS[name], False, x, args.repeats)
        excited = median_ms(layer, OPTIMIZERS[name], True, x, args.repeats)
        n = sum(p.numel() for p, _ in layer.expert_parameters())
        cells = [f"{a:.2f} | {b:.2f} | {100 * (b / a - 1):+.1f}%" for a, b in zip(plain, excited, strict=True)]
        print(f"| {experts} | {storage} | {name} | {n / 1e6:.2f}M | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
