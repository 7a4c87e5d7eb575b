"""The paper's variance-shift analysis of the four block types on the built-in digits data set.

For each block type (0-3) and each of drop-neuron and drop-channel at one rate, trains a
small pre-activation ResNet briefly, then measures the eval/train ratio of the input
variance at the first, middle and last norm that receives dropped activations (on the
training images, the same images in both passes), and the test accuracy::

    python -m effdrop_triton.experiments.block_types --drop-rate 0.2 --epochs 8 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import effdrop_triton as ed
from effdrop_triton.train.data import DIGITS_CLASSES, digits_splits
from effdrop_triton.models import preresnet


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drop-rate", type=float, default=0.2, help="dropout rate of every block (default 0.2)")
    parser.add_argument("--depth", type=int, default=11, help="pre-activation ResNet depth, 9n+2 (default 11)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-types", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--drop-types", nargs="+", default=["neuron", "channel"])
    return parser


def train(model, loader, epochs: int, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            scheduler.step()


@torch.no_grad()
def measure_shift(model, loader) -> list:
    """Eval/train input-variance ratios of the receiving norms, in module order. Runs on a copy
    so the measuring passes leave the trained model's running statistics alone; the eval passes
    come first, so they use the trained running statistics, not ones the train passes re-estimated."""
    probe = copy.deepcopy(model)
    names = ed.track_variance_shift(probe)
    for training in (False, True):
        probe.train(training)
        for images, _ in loader:
            probe(images)
    report = ed.variance_shift(probe)
    return [report[name]["var"] for name in names if name in report]


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def main(args) -> list:
    # the convolutions' reduction order, and so every number below, depends on the intra-op thread count
    print(f"drop rate {args.drop_rate}, pre-activation ResNet-{args.depth}, {args.epochs} epochs, seed {args.seed}, "
          f"{torch.get_num_threads()} threads, digits 32x32; eval/train ratio of the input variance of the norms that receive dropped activations "
          "(1 = no shift)")
    print(HEADER)
    splits = digits_splits(seed=0)
    rows = []
    for block_type in args.block_types:
        for drop_type in args.drop_types:
            torch.manual_seed(args.seed)
            generator = torch.Generator().manual_seed(args.seed)
            train_loader = DataLoader(splits["train"], batch_size=args.batch_size, shuffle=True, generator=generator)
            model = preresnet(depth=args.depth, num_classes=DIGITS_CLASSES, in_channels=1, block_type=block_type,
                              drop_type=drop_type, drop_rate=args.drop_rate)
            start = time.perf_counter()
            train(model, train_loader, args.epochs, args.lr)
            ratios = measure_shift(model, DataLoader(splits["train"], batch_size=256))
            picked = [ratios[0], ratios[len(ratios) // 2], ratios[-1]] if ratios else [float("nan")] * 3
            rows.append((block_type, drop_type, *picked, len(ratios),
                         accuracy(model, DataLoader(splits["test"], batch_size=256)), time.perf_counter() - start))
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| block type | dropout | var ratio first | middle | last | tracked norms | test acc | time |\n"
          "|---|---|---|---|---|---|---|---|")


def format_row(row) -> str:
    block_type, drop_type, first, middle, last, count, acc, seconds = row
    return (f"| {block_type} ({ed.blocks.BLOCK_TYPES[block_type]}) | {drop_type} | {first:.3f} | {middle:.3f} | "
            f"{last:.3f} | {count} | {acc:.2%} | {seconds:.0f} s |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
