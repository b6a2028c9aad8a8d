"""Benchmark: one MoE feed-forward layer against the dense MLP with the same active FLOPs.

``MoEFeedForward(dim, hidden, experts, top_k)`` (stacked and list storage) against
``Linear(dim, top_k * hidden) -> GELU -> Linear(top_k * hidden, dim)``: each token goes through
``top_k`` experts of width ``hidden``, so both compute the same multiply-adds apart from the MoE's
router (``dim x experts`` per token). One step is the forward and the backward of the layer on
``tokens`` tokens (the input requires a gradient, as inside a network; the parameters' gradients
are set to None before each step, as ``zero_grad()`` does). The arms run interleaved in one
process, a step of each in turn, so that a busy machine slows them alike; medians over the steps.

    OMP_NUM_THREADS=1 python benchmarks/moe_vs_dense.py --steps 30

``--gemms`` also times the six matrix products of the layer's forward and backward on their own
(``torch.mm`` into preallocated outputs, balanced routing: ``tokens * top_k / experts`` tokens per
expert), each three ways: the dense layer's product, the experts' products run in turn as the
layer runs them (each expert's weight read from memory), and one expert's product run as many
times (its weight in cache). The difference between the last two is the cost of streaming the
experts' weights, which the dense layer (one weight, reused by every token) does not pay.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from seeking.moe import KERNELS, MoEFeedForward


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
    parser.add_argument(
        "--kernels", nargs="*", default=[], choices=sorted(KERNELS), help="extra stacked arms on these kernels"
    )
    parser.add_argument("--gemms", action="store_true", help="also time the six matrix products alone (above)")
    args = parser.parse_args()
    for name in ("dim", "hidden", "experts", "top_k", "tokens", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    if args.top_k > args.experts:
        parser.error(
            f"--top-k {args.top_k} is more than the {args.experts} experts: give --top-k {args.experts} or less"
        )
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
    if args.gemms:
        gemms(args, device)


def gemms(args: argparse.Namespace, device: torch.device) -> None:
    """The six products of an MLP's forward and backward, dense against experts streamed and in cache."""
    experts, dim, hidden = args.experts, args.dim, args.hidden
    width, each = args.top_k * hidden, args.tokens * args.top_k // args.experts

    def operands(tokens: int, out: int) -> dict[str, Tensor]:  # the products' operands for one layer
        return {
            "x": torch.randn(tokens, dim, device=device),
            "h": torch.randn(tokens, out, device=device),
            "g": torch.randn(tokens, dim, device=device),
        }

    # (name, A, B) as functions of (x, h, g) and the layer's two weights: forward, then backward
    products: list[tuple[str, Callable[..., tuple[Tensor, Tensor]]]] = [
        ("x @ w1", lambda o, w1, w2: (o["x"], w1)),
        ("h @ w2", lambda o, w1, w2: (o["h"], w2)),
        ("g @ w2.T (input grad)", lambda o, w1, w2: (o["g"], w2.T)),
        ("h.T @ g (w2 grad)", lambda o, w1, w2: (o["h"].T, o["g"])),
        ("h @ w1.T (input grad)", lambda o, w1, w2: (o["h"], w1.T)),
        ("x.T @ h (w1 grad)", lambda o, w1, w2: (o["x"].T, o["h"])),
    ]
    dense_ops = operands(args.tokens, width)
    dense_w1, dense_w2 = torch.randn(dim, width, device=device), torch.randn(width, dim, device=device)
    expert_ops = [operands(each, hidden) for _ in range(experts)]
    w1 = torch.randn(experts, dim, hidden, device=device)
    w2 = torch.randn(experts, hidden, dim, device=device)

    def timed(pairs: list[tuple[Tensor, Tensor]]) -> float:
        outs = [torch.empty(a.shape[0], b.shape[1], device=device) for a, b in pairs]
        runs = []
        for repeat in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for (a, b), out in zip(pairs, outs, strict=True):
                torch.mm(a, b, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat >= args.warmup:
                runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    streamed_mb = 4 * experts * dim * hidden / 1e6
    print(
        f"\nThe six products alone ({each} tokens per expert; each expert weight {streamed_mb / experts:.2f} MB, "
        f"all {streamed_mb:.1f} MB, read once per product in turn), medians over {args.steps}:"
    )
    print("| product | dense ms | experts in turn ms | / dense | one expert repeated ms | / dense |")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for name, pick in products:
        dense = timed([pick(dense_ops, dense_w1, dense_w2)])
        streamed = timed([pick(expert_ops[e], w1[e], w2[e]) for e in range(experts)])
        cached = timed([pick(expert_ops[0], w1[0], w2[0])] * experts)
        totals = [t + v for t, v in zip(totals, (dense, streamed, cached), strict=True)]
        print(
            f"| {name} | {1e3 * dense:.2f} | {1e3 * streamed:.2f} | {streamed / dense:.2f}x "
            f"| {1e3 * cached:.2f} | {cached / dense:.2f}x |"
        )
    dense, streamed, cached = totals
    print(
        f"| all six | {1e3 * dense:.1f} | {1e3 * streamed:.1f} | {streamed / dense:.2f}x "
        f"| {1e3 * cached:.1f} | {cached / dense:.2f}x |"
    )


if __name__ == "__main__":
    main()
