"""Benchmark: one MoE feed-forward layer against the dense MLP with the same active FLOPs.

``MoEFeedForward(dim, hidden, experts, top_k)`` (stacked and list storage) against
``Linear(dim, top_k * hidden) -> GELU -> Linear(top_k * hidden, dim)``: each token goes through
``top_k`` experts of width ``hidden``, so both compute the same multiply-adds apart from the MoE's
router (``dim x experts`` per token). One step is the forward and the backward of the layer on
``tokens`` tokens (the input requires a gradient, as inside a network; the parameters' gradients
are set to None before each step, as ``zero_grad()`` does). The arms run interleaved in one
process, a step of each in turn, so that a busy machine slows them alike; medians over the steps.

    OMP_NUM_THREADS=1 python benchmarks/moe_vs_dense.py --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from seeking.moe import MoEFeedForward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernels", nargs="*", default=[], help="extra stacked arms: seeking.moe.KERNELS names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    width = args.top_k * args.hidden
    arms: dict[str, nn.Module] = {
        "dense": nn.Sequential(
            nn.Linear(args.dim, width, bias=False), nn.GELU(), nn.Linear(width, args.dim, bias=False)
        ),
        "moe stacked": MoEFeedForward(args.dim, args.hidden, args.experts, args.top_k, storage="stacked"),
        "moe list": MoEFeedForward(args.dim, args.hidden, args.experts, args.top_k, storage="list"),
    }
    for kernel in args.kernels:  # stacked experts on a given kernel rather than the one chosen per device
        arms[f"moe stacked, {kernel}"] = MoEFeedForward(args.dim, args.hidden, args.experts, args.top_k)
        arms[f"moe stacked, {kernel}"].kernel = kernel
    for module in arms.values():
        module.to(device)
    x = torch.randn(args.tokens, args.dim, device=device, requires_grad=True)
    grad = torch.randn(args.tokens, args.dim, device=device)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in range(args.warmup + args.steps):
        for name, module in arms.items():
            for p in (x, *module.parameters()):
                p.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            module(x).backward(grad)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    dense = statistics.median(times["dense"])
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; {args.tokens} tokens, "
        f"dim {args.dim}, {args.experts} experts x hidden {args.hidden}, top-{args.top_k} vs dense hidden {width}; "
        f"forward + backward, medians over {args.steps} interleaved steps"
    )
    print("| layer | ms | / dense |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.1f} | {median / dense:.2f}x |")


if __name__ == "__main__":
    main()
