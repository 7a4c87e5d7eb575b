"""Who each op is compared with: this package (two backends) and the code a user would
otherwise write, one callable per baseline, defined only here.

A baseline takes the package function's arguments (``x`` / ``branches`` /
``branch, shortcut``, then ``p``) and always trains. The first baseline of an op
is the one the report's speed-up column divides by.
"""

from __future__ import annotations

import timm.layers
import torch
import torch.nn.functional as F
import torchvision.ops

PACKAGE = ("triton", "torch")  # effdrop_triton under use_backend(name)


def drop_path_cat_ref(branches, p: float, training: bool = True) -> torch.Tensor:
    """Drop-path over a multi-path block: each branch times a per-sample Bernoulli gate / keep, then concat."""
    if not training or p == 0.0:
        return torch.cat(branches, dim=1)
    keep = 1.0 - p
    gated = []
    for branch in branches:
        gate = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep).div_(keep)
        gated.append(branch * gate)
    return torch.cat(gated, dim=1)


def stochastic_depth_add(branch, shortcut, p: float) -> torch.Tensor:
    return torchvision.ops.stochastic_depth(branch, p, "row", training=True) + shortcut


_timm_modules = {}


def timm_drop_path_add(branch, shortcut, p: float) -> torch.Tensor:
    """timm's ``DropPath(p)`` module (training mode, built once per p) on the branch, then the residual add."""
    if p not in _timm_modules:
        _timm_modules[p] = timm.layers.DropPath(p)
    return _timm_modules[p](branch) + shortcut


def eager_bn_relu_dropout2d(x, weight, bias, p: float) -> torch.Tensor:
    """What ``nn.BatchNorm2d`` + ``nn.ReLU`` + ``nn.Dropout2d`` run in training: batch statistics (running
    statistics left out: a C-element update), affine, ReLU, then channel dropout; three passes over memory."""
    y = F.batch_norm(x, None, None, weight, bias, training=True)
    return F.dropout2d(F.relu(y), p, training=True)


BASELINES = {
    "drop_neuron": {"F.dropout": lambda x, p: F.dropout(x, p, training=True)},
    "drop_channel": {"F.dropout2d": lambda x, p: F.dropout2d(x, p, training=True)},
    "drop_path": {"cat_ref": drop_path_cat_ref},
    "drop_layer": {"torchvision": stochastic_depth_add, "timm": timm_drop_path_add},
    "norm_act_drop": {"eager_bn_relu_dropout2d": eager_bn_relu_dropout2d},
}


def providers(op: str) -> list:
    """Every provider benchmarked for ``op``: this package's backends, then its baselines."""
    return [*PACKAGE, *BASELINES[op]]
