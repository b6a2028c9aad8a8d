"""Benchmark: the cost of one switch (syncing shared weights) against one training step.

For each pair and sync mode, times ``Motivator.select()`` when the condition has just flipped (the
full switch: shared weights, and the optimizer state under the ``carried`` policy) and one
training step of the base (forward, backward, optimizer update: SGD with momentum for the image
models on a CIFAR-shaped batch, AdamW for the GPT on a batch of character ids). Steps and switches
are interleaved (a step, then a few switches, in turn), so that a busy machine slows both alike;
medians over all of them, whose ratio is what to compare. "copied MB" is what a switch moves:
the shared tensors not aliased, and under ``carried`` their optimizer state not aliased (``share``
aliases both where the regions are contiguous).

    OMP_NUM_THREADS=1 python benchmarks/switch_cost.py --steps 10 --states carried --syncs copy
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
STATES = ("carried", "separate")
VIT = {"patch_size": 4}
VOCAB, BLOCK = 65, 64  # Tiny Shakespeare's characters, the text benchmarks' block


def images(batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 3, 32, 32, device=device), torch.randint(0, 10, (batch_size,), device=device)


def characters(batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.randint(0, VOCAB, (batch_size, BLOCK), device=device),
        torch.randint(0, VOCAB, (batch_size, BLOCK), device=device),
    )


# data kind -> (model kwargs, batch of inputs and targets, optimizer)
DATA = {
    "image": (
        {"num_classes": 10, "in_channels": 3, "image_size": [32, 32]},
        images,
        partial(torch.optim.SGD, lr=0.01, momentum=0.9),
    ),
    "text": ({"vocab_size": VOCAB, "block_size": BLOCK}, characters, partial(torch.optim.AdamW, lr=1e-3)),
}
# label -> (base, base kwargs, motivated, motivated kwargs, data kind)
PAIRS = {
    "resnet20 -> resnet32": ("resnet20", {}, "resnet32", {}, "image"),
    "resnet20 -> resnet56": ("resnet20", {}, "resnet56", {}, "image"),
    "resnet20 -> resnet32 (width x2)": ("resnet20", {}, "resnet32", {"width": 2}, "image"),
    "timm resnet18 -> resnet34": ("resnet18", {}, "resnet34", {}, "image"),
    "timm efficientnet_b0 -> b2": ("efficientnet_b0", {}, "efficientnet_b2", {}, "image"),
    "timm vit_tiny -> vit_small (patch 4)": ("vit_tiny_patch16_224", VIT, "vit_small_patch16_224", VIT, "image"),
    "gpt_4l -> gpt_8l": ("gpt_4l", {}, "gpt_8l", {}, "text"),
}


def train_step(motivator: Motivator, x: torch.Tensor, y: torch.Tensor) -> None:
    model, optimizer = motivator.select()
    loss = F.cross_entropy(model(x).flatten(0, -2), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def timed(fn, device: str) -> float:
    """Wall seconds of ``fn()``, the device's queued work included (CUDA runs asynchronously)."""
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def switch(motivator: Motivator) -> None:
    motivator.condition.motivated = not motivator.condition.motivated
    motivator.select()


def copied_mb(motivator: Motivator, state: str) -> float:
    """What one switch copies: the shared tensors that are not one storage in both models, and under
    ``carried`` their optimizer state tensors that are not one storage in both optimizers."""
    base = dict(motivator.models["base"].named_parameters())
    large = dict(motivator.models["motivated"].named_parameters())
    base_state, large_state = (motivator.optimizers[role].state for role in ("base", "motivated"))

    def one_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    total = 0
    for e in motivator.map.parameters():
        b, m = base[e.base], large[e.motivated]
        total += 0 if one_storage(b, m) else b.nbytes
        if state == "carried":
            theirs = large_state.get(m, {})
            for key, value in base_state.get(b, {}).items():
                if torch.is_tensor(value) and not (key in theirs and one_storage(value, theirs[key])):
                    total += value.nbytes
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch; the GPT takes a quarter")
    parser.add_argument("--switches", type=int, default=10, help="switches timed after each step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS), metavar="PAIR")
    parser.add_argument("--syncs", nargs="+", choices=SYNCS, default=list(SYNCS))
    parser.add_argument("--states", nargs="+", choices=STATES, default=list(STATES))
    parser.add_argument("--device", default="cpu", help="e.g. cuda: models, batches and optimizer state there")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}x3x32x32 "
        f"(GPT: {args.batch_size // 4}x{BLOCK} characters); medians over {args.steps} steps and "
        f"{args.steps * args.switches} switches, interleaved"
    )
    print("| pair | sync | optimizer state | aliased tensors | copied MB | switch ms | base step ms | switch / step |")
    print("|---|---|---|---|---|---|---|---|")
    for label, state, sync in itertools.product(args.pairs, args.states, args.syncs):
        base_name, base_kwargs, large_name, large_kwargs, kind = PAIRS[label]
        model_kwargs, batch, make_optimizer = DATA[kind]
        x, y = batch(args.batch_size // 4 if kind == "text" else args.batch_size, args.device)
        torch.manual_seed(0)
        base = create_model(base_name, **model_kwargs, **base_kwargs).to(args.device)
        large = create_model(large_name, **model_kwargs, **large_kwargs).to(args.device)
        optimizers = [make_optimizer(m.parameters()) for m in (base, large)]
        motivator = Motivator(base, large, ConsecutiveDecrease(2), *optimizers, sync=sync, optimizer_state=state)

        for flag in (True, False):  # give both optimizers state, so the carry has work to do
            motivator.condition.motivated = flag
            train_step(motivator, x, y)
        switches, steps = [], []
        for _ in range(args.steps):
            steps.append(timed(partial(train_step, motivator, x, y), args.device))
            # an even number of switches: back on the base for the next step
            switches += [timed(partial(switch, motivator), args.device) for _ in range(2 * (args.switches // 2))]
        switch_ms, step_ms = 1000 * statistics.median(switches), 1000 * statistics.median(steps)
        aliased = f"{len(motivator.map.aliased)}/{len(motivator.map.entries)}"
        print(
            f"| {label} | {sync} | {state} | {aliased} | {copied_mb(motivator, state):.1f} | {switch_ms:.3f} | "
            f"{step_ms:.1f} | {100 * switch_ms / step_ms:.2f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
