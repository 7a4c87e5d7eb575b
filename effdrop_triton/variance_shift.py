"""Variance shift (Cai et al., section 3): dropout changes the statistics a norm layer sees
between training and inference. Track the norm that receives dropped activations and
report, per layer, the eval/train ratio of its input mean and variance.

``track_variance_shift(model)`` finds the receiving norms by walking the modules in
registration order, which is execution order for the sequential CNNs of this package:
the first norm after each active dropout (a norm-act-drop module's own norm comes before
its dropout, so for block types 0/1 the receiver is the next block's norm).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .modules import DropChannel, DropLayer, DropNeuron, DropPath, Residual
from .norm_act import ActDrop, InputStats

_TORCH_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _drops(module: nn.Module) -> bool:
    """True when ``module``'s output carries dropped activations (an active dropout)."""
    if isinstance(module, (DropNeuron, DropChannel, DropPath, DropLayer)) or isinstance(module, _TORCH_DROPOUTS):
        return module.p > 0
    if isinstance(module, ActDrop):
        return module.drop_rate > 0
    if isinstance(module, Residual):
        return module.drop_rate > 0
    return False


def receiving_norms(model: nn.Module) -> List[str]:
    """Module paths of the first trackable norm after each active dropout, in registration order."""
    found: List[str] = []
    pending = False

    def visit(module: nn.Module, name: str) -> None:
        nonlocal pending
        if isinstance(module, InputStats):
            if pending:
                found.append(name)
                pending = False
            pending = pending or _drops(module)
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)
        if _drops(module):
            pending = True

    visit(model, "")
    return found


def track_variance_shift(model: nn.Module, on: bool = True) -> List[str]:
    """Switch input-statistics tracking of the receiving norms on (statistics reset) or every norm off.

    Returns the module paths now tracked.
    """
    tracked = receiving_norms(model) if on else []
    for name, module in model.named_modules():
        if isinstance(module, InputStats):
            module.track_stats = name in tracked
            if module.track_stats:
                module.reset_input_stats()
    return tracked


def reset_variance_shift(model: nn.Module) -> None:
    """Forget the recorded statistics of every tracked norm (e.g. at the start of an epoch)."""
    for module in model.modules():
        if isinstance(module, InputStats):
            module.reset_input_stats()


def channel_ratio(eval_stat: torch.Tensor, train_stat: torch.Tensor, floor: torch.Tensor) -> float:
    """Mean over channels of ``eval / train``, over the channels whose train value clears ``floor``
    (per channel) in magnitude: a ratio to a value near zero says nothing. NaN when none does."""
    usable = train_stat.abs() > floor
    if not bool(usable.any()):
        return float("nan")
    return float((eval_stat[usable] / train_stat[usable]).mean())


def variance_shift(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """Per tracked norm (by module path) with train and eval passes recorded: the eval/train
    ratios of its input's per-channel mean and variance, averaged over channels."""
    report = {}
    for name, module in model.named_modules():
        if not isinstance(module, InputStats) or not module.track_stats:
            continue
        if int(module.input_count_train) == 0 or int(module.input_count_eval) == 0:
            continue
        train_mean, train_var = module.input_mean_train, module.input_var_train
        train_std = train_var.sqrt()
        report[name] = {
            # a channel mean within a tenth of the channel's spread counts as zero: its ratio is noise
            "mean": channel_ratio(module.input_mean_eval, train_mean, 0.1 * train_std),
            # a dead channel (variance negligible against its RMS) carries no variance ratio
            "var": channel_ratio(module.input_var_eval, train_var, 1e-6 * (train_var + train_mean.square())),
        }
    return report
