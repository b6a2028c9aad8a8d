"""Benchmark: the optimizer step and the whole training step of a GPT-MoE, plain and with Excitation.

The model of issue 17 by default: ``GPTMoE(vocab 65, block 128, depth 4, width 256, heads 4, 64
experts top-2)``, batch 16 x 128 random tokens, stacked or list experts. For each optimizer, one
model is stepped by the plain optimizer and by ``Excitation(zero_sum)`` over an optimizer of its own,
in turns (ABBA order, so that drift of a shared machine falls on both arms), and the medians are
compared (and, for the training step, the median of each round's paired relative difference, with
its distribution-free 95% interval):

- "optimizer step": ``optimizer.step()`` alone, with the gradients and routing counts of one real
  forward and backward in place; the Excitation arm twice: the fused step (the default) and the
  general fallback (``fused=False``: snapshot, base step, ``lerp``), which the fused step replaces;
- "training step": zero_grad, forward, loss (with the MoE auxiliary loss), backward and step.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/excitation_overhead.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/excitation_overhead.py --experts 16 --width 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import scipy.stats
import torch

from seeking.excitation import Excitation
from seeking.models import GPTMoE, lm_loss
from seeking.moe import expert_layers, moe_aux_loss

OPTIMIZERS: dict[str, Callable] = {
    "sgd+momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    "sgd+nesterov+wd": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
}


def synchronize() -> None:
    """Wait for the device's queued work: a CUDA step returns before its kernels finish."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return 1000 * (time.perf_counter() - start)


def interleaved(arms: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each arm's times in ms, run in turns (ABBA...) after ``warmup`` untimed rounds: the ``i``-th time
    of every arm comes from the same round, next to each other."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    order = list(arms)
    for i in range(warmup + repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            elapsed = timed(arms[name])
            if i >= warmup:
                times[name].append(elapsed)
    return times


def median_text(values: list[float], level: float = 0.95) -> str:
    """``median [low, high]%``: the median and its distribution-free interval at ``level`` (order
    statistics, ``scipy.stats.quantile_test``); one value has none."""
    median = statistics.median(values)
    if len(values) < 2:
        return f"{median:+.1f}% (one round: no interval)"
    interval = scipy.stats.quantile_test(values, q=median, p=0.5).confidence_interval(confidence_level=level)
    return f"{median:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]%"


def measure(model: GPTMoE, make: Callable, tokens: torch.Tensor, repeats: int, train_repeats: int) -> dict[str, Any]:
    x, y = tokens[:, :-1], tokens[:, 1:]
    layers = expert_layers(model)

    def backward() -> None:
        loss = lm_loss(model(x), y) + moe_aux_loss(model)
        loss.backward()

    plain = make(model.parameters())
    fused = Excitation(make(model.parameters()), model, "zero_sum")
    lerped = Excitation(make(model.parameters()), model, "zero_sum", fused=False)
    model.zero_grad()
    backward()
    counts = [layer.expert_counts.clone() for layer in layers]

    def excited_step(optimizer: Excitation) -> Callable[[], object]:
        def step() -> None:
            for layer, c in zip(layers, counts, strict=True):
                layer.expert_counts.copy_(c)
            optimizer.step()

        return step

    steps = interleaved({"plain": plain.step, "fused": excited_step(fused), "fallback": excited_step(lerped)}, repeats)
    result: dict[str, Any] = {f"step {k}": statistics.median(v) for k, v in steps.items()}
    del lerped

    def train(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
        def step() -> None:
            optimizer.zero_grad()
            for layer in layers:  # the counts of this batch only (the plain arm does not zero them)
                layer.expert_counts.zero_()
            backward()
            optimizer.step()

        return step

    trained = interleaved({"plain": train(plain), "fused": train(fused)}, train_repeats)
    result |= {f"train {k}": statistics.median(v) for k, v in trained.items()}
    # each round's two steps ran next to each other: the median of the rounds' relative differences and
    # its interval say whether the whole-step overhead is within a percent, which two medians cannot
    # (distribution-free: a shared machine's step times have long tails, which a t interval is not made for)
    result["train paired"] = [100 * (f / p - 1) for p, f in zip(trained["plain"], trained["fused"], strict=True)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--storage", nargs="+", default=["stacked", "list"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--repeats", type=int, default=10, help="optimizer steps per arm (median)")
    parser.add_argument("--train-repeats", type=int, default=6, help="training steps per arm (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; GPTMoE(vocab 65, "
        f"block {args.block}, depth {args.depth}, width {args.width}, heads 4, {args.experts} experts top-2), "
        f"batch {args.batch}x{args.block}; "
        f"medians of {args.repeats} optimizer steps and {args.train_repeats} training steps per arm, interleaved"
    )
    print(
        "| storage | optimizer | expert params | optimizer step ms: plain | fused | overhead | fallback | overhead "
        "| training step ms: plain | excitation | overhead | paired overhead, median [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for storage in args.storage:
        for name in args.optimizers:
            torch.manual_seed(0)
            model = GPTMoE(65, args.block, args.depth, args.width, 4, args.experts, 2, storage=storage)
            model = model.to(args.device)
            tokens = torch.randint(0, 65, (args.batch, args.block + 1)).to(args.device)
            r = measure(model, OPTIMIZERS[name], tokens, args.repeats, args.train_repeats)
            n = sum(p.numel() for layer in expert_layers(model) for p, _ in layer.expert_parameters())

            def pct(a: float, b: float) -> str:
                return f"{100 * (b / a - 1):+.1f}%"

            print(
                f"| {storage} | {name} | {n / 1e6:.1f}M | {r['step plain']:.1f} | {r['step fused']:.1f} | "
                f"{pct(r['step plain'], r['step fused'])} | {r['step fallback']:.1f} | "
                f"{pct(r['step plain'], r['step fallback'])} | {r['train plain']:.0f} | {r['train fused']:.0f} | "
                f"{pct(r['train plain'], r['train fused'])} | {median_text(r['train paired'])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
