"""Benchmark: are both models of a motivated run usable as saved? BatchNorm statistics as trained
(``separate`` or ``shared`` policy) against statistics re-estimated on N augmented training batches.

Runs the README's Python quick start (the Motivator in a plain loop: ResNet-20 inside ResNet-32 on
the embedded digits, 2 epochs, batch 64, k = 2) for several seeds and each BatchNorm policy, then
tests each model as trained and after :meth:`seeking.Motivator.deployable` with N calibration
batches. Re-estimation does not change the weights, so one training per seed and policy serves
every N. Prints a Markdown table (mean ± std over seeds, and the worst seed).

    python benchmarks/batchnorm_deployable.py --seeds 0 1 2 3 4 --calibration 5 20
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from common import mean_std

import seeking
from seeking.data import augment, batches, normalize


def train_pair(data: seeking.ImageDataset, seed: int, batchnorm: str, epochs: int) -> seeking.Motivator:
    """The README quick start's loop, with the seed and the BatchNorm policy as arguments."""
    torch.manual_seed(seed)
    kwargs = dict(num_classes=data.num_classes, in_channels=data.in_channels)
    base, large = seeking.create_model("resnet20", **kwargs), seeking.create_model("resnet32", **kwargs)

    def make_sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    condition = seeking.ConsecutiveDecrease(k=2)
    motivator = seeking.Motivator(base, large, condition, make_sgd(base), make_sgd(large), batchnorm=batchnorm)
    for _ in range(epochs):
        for x, y in batches(data.train, 64, shuffle=True, drop_last=True):
            model, optimizer = motivator.select()
            loss = F.cross_entropy(model(training_view(data, x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            motivator.observe(loss)
    return motivator


def training_view(data: seeking.ImageDataset, x: torch.Tensor) -> torch.Tensor:
    return normalize(augment(x, padding=1, hflip=data.hflip), data.mean, data.std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calibration", type=int, nargs="+", default=[5, 20], help="numbers of batches N")
    args = parser.parse_args()

    data = seeking.load_dataset("digits", progress=False)
    scores: dict[str, dict[str, list[float]]] = {}
    p = []
    for seed, batchnorm in itertools.product(args.seeds, ("separate", "shared")):
        motivator = train_pair(data, seed, batchnorm, args.epochs)
        p.append(motivator.p)
        variants = {f"{batchnorm} BN, as trained": None}
        variants.update({f"{batchnorm} BN, re-estimated on {n} batches": n for n in args.calibration})
        for label, n in variants.items():
            calibration = None
            if n is not None:
                chosen = itertools.islice(batches(data.train, 64, shuffle=True), n)
                calibration = [training_view(data, x) for x, _ in chosen]
            models = motivator.deployable(calibration)
            row = scores.setdefault(label, {"base": [], "motivated": []})
            for name, model in models.items():
                row[name].append(seeking.evaluate(model, data.test, data.mean, data.std)["accuracy"])
        print(f"seed {seed}, {batchnorm}: " + ", ".join(f"{k} {v['motivated'][-1]:.2f}" for k, v in scores.items()))

    print(
        f"\nREADME quick start (resnet20 -> resnet32, digits, {args.epochs} epochs, batch 64, k = 2), "
        f"seeds {args.seeds}, p = {mean_std(p, '.3f')}; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| BatchNorm statistics | base acc % | motivated acc % | worst seed, base / motivated |")
    print("|---|---|---|---|")
    for label, row in scores.items():
        worst = f"{min(row['base']):.2f} / {min(row['motivated']):.2f}"
        print(f"| {label} | {mean_std(row['base'])} | {mean_std(row['motivated'])} | {worst} |")


if __name__ == "__main__":
    main()
