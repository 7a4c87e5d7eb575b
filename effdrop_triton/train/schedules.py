"""Learning-rate schedules of ``effdrop-train``: ``torch.optim.lr_scheduler`` objects stepped once per
epoch, after the epoch, so epoch ``e`` trains with the rate the schedule gives for ``e``.

* ``step``: x0.1 at 50% and 75% of the epochs (pre-activation ResNet, DenseNet, ResNeXt on CIFAR);
* ``wrn``: x0.2 at 30%, 60% and 80% (Wide-ResNet);
* ``cosine``: cosine annealing to 0 over the epochs;
* ``imagenet``: x0.1 every 30 epochs.

Milestones are fractions of the total, rounded down (``int(0.5 * 164) = 82``), as in the paper's
repository. ``warmup_epochs`` > 0 prepends a linear warmup (epoch ``k < w`` trains at
``lr * (k + 1) / (w + 1)``); the milestones stay where they are without warmup, and cosine
anneals over the epochs after it.
"""

from __future__ import annotations

import warnings
from typing import List

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

SCHEDULES = ("step", "wrn", "cosine", "imagenet")

_STEP_FRACTIONS = {"step": ((0.5, 0.75), 0.1), "wrn": ((0.3, 0.6, 0.8), 0.2)}


def milestones(name: str, epochs: int) -> List[int]:
    """The epochs at whose start a step schedule ``name`` has just multiplied the rate by its factor."""
    if name == "imagenet":
        return list(range(30, epochs, 30))
    fractions, _ = _STEP_FRACTIONS[name]
    return [int(fraction * epochs) for fraction in fractions]


def build_scheduler(optimizer: Optimizer, name: str, epochs: int, warmup_epochs: int = 0) -> LRScheduler:
    """The per-epoch schedule ``name`` (one of :data:`SCHEDULES`) over ``epochs`` epochs."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs), got {warmup_epochs} with epochs={epochs}")
    if name == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs)
    else:
        gamma = 0.1 if name == "imagenet" else _STEP_FRACTIONS[name][1]
        # SequentialLR restarts the main schedule's count at the end of warmup: shift its milestones back
        main = MultiStepLR(optimizer, [m - warmup_epochs for m in milestones(name, epochs)], gamma=gamma)
    if not warmup_epochs:
        return main
    warmup = LinearLR(optimizer, start_factor=1 / (warmup_epochs + 1), total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])


def fast_forward(optimizer: Optimizer, name: str, epochs: int, warmup_epochs: int, base_lr: float,
                 epoch: int) -> LRScheduler:
    """A fresh schedule for ``epochs`` epochs, stepped to ``epoch`` from ``base_lr``: the same steps, so
    the same rates bit for bit, as a run that went through those epochs with this schedule. Used when
    a resumed run changes ``--epochs`` (the saved schedule was for the old length)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = base_lr
    scheduler = build_scheduler(optimizer, name, epochs, warmup_epochs)
    with warnings.catch_warnings():  # PyTorch warns of scheduler steps without optimizer steps: wanted here
        warnings.filterwarnings("ignore", message="Detected call of")
        for _ in range(epoch):
            scheduler.step()
    return scheduler


def learning_rates_as_tensors(optimizer: Optimizer, device: torch.device) -> None:
    """Each group's rate as a 0-d float64 tensor on ``device`` (the schedules then fill it in place): a
    compiled optimizer step reads it there, where a Python float would be a constant of its graph, so
    every new rate would compile the step again."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
