"""Who each op is compared with: this package (two backends) and the code a user would
otherwise write, one callable per baseline, defined only here.

A baseline takes the package function's arguments (``x`` / ``branches`` /
``branch, shortcut``, then ``p``) and always trains, except ``norm_act_drop_eval`` (inference
with running statistics). The first baseline of an op is the one the report's speed-up
column divides by. ``eager_twin(model)`` turns a model built from this package's blocks into
the same network built from PyTorch's own modules (the training-step benchmark's baseline).
"""

from __future__ import annotations

import copy

import timm.layers
import torch
import torch.nn.functional as F
import torchvision.ops
from torch import nn

from effdrop_triton.levels import DropLevel
from effdrop_triton import BatchNormActDrop2d, ConvBlock, DropChannel, DropLayer, DropNeuron, DropPath, \
    GroupNormActDrop, Residual

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


@torch.no_grad()
def eager_bn_relu_dropout2d_eval(x, weight, bias, running_mean, running_var, p: float) -> torch.Tensor:
    """The same modules in eval mode, under no_grad (inference): running statistics, ReLU, and
    ``nn.Dropout2d``'s eval pass-through (no copy)."""
    y = F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training=False))
    return F.dropout2d(y, p, training=False)


BASELINES = {
    "drop_neuron": {"F.dropout": lambda x, p: F.dropout(x, p, training=True)},
    "drop_channel": {"F.dropout2d": lambda x, p: F.dropout2d(x, p, training=True)},
    "drop_path": {"cat_ref": drop_path_cat_ref},
    "drop_layer": {"torchvision": stochastic_depth_add, "timm": timm_drop_path_add},
    "norm_act_drop": {"eager_bn_relu_dropout2d": eager_bn_relu_dropout2d},
    "norm_act_drop_eval": {"eager_bn_relu_dropout2d": eager_bn_relu_dropout2d_eval},
}


def providers(op: str) -> list:
    """Every provider benchmarked for ``op``: this package's backends, then its baselines."""
    return [*PACKAGE, *BASELINES[op]]


def _eager_norm_act(module: nn.Module) -> nn.Module:
    """``nn.BatchNorm2d`` / ``nn.GroupNorm`` holding ``module``'s state, then ``nn.ReLU`` (if it has one)
    and ``nn.Dropout2d`` / ``nn.Dropout`` (if its rate is above 0), as an ``nn.Sequential``."""
    if isinstance(module, BatchNormActDrop2d):
        norm = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    else:
        norm = nn.GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine)
    norm.load_state_dict(module.state_dict())  # same state dict: the package's norms subclass these
    ref = next(module.parameters(), None) if module.affine else getattr(module, "running_mean", None)
    if ref is not None:
        norm.to(device=ref.device, dtype=ref.dtype)
    layers = [norm]
    if module.act:
        layers.append(nn.ReLU())
    if module.drop_rate > 0:
        layers.append((nn.Dropout2d if module.drop_type == DropLevel.CHANNEL else nn.Dropout)(module.drop_rate))
    return nn.Sequential(*layers).train(module.training)


def _eager_module(module: nn.Module):
    """The PyTorch replacement of one of this package's modules, or None to recurse into it."""
    if isinstance(module, (BatchNormActDrop2d, GroupNormActDrop)):
        return _eager_norm_act(module)
    if isinstance(module, ConvBlock) and module.block_type == 0:
        # norm-ReLU-drop-conv: the fused op (conv input recomputed in backward) as plain module calls
        return nn.Sequential(_eager_norm_act(module.norm), module.conv).train(module.training)
    if type(module) is DropNeuron:
        return nn.Dropout(module.p).train(module.training)
    if type(module) is DropChannel:
        return nn.Dropout2d(module.p).train(module.training)
    if isinstance(module, (DropPath, DropLayer)) or (isinstance(module, Residual) and module.drop_rate > 0):
        raise ValueError(f"eager_twin: no PyTorch module for {type(module).__name__} (drop-path / drop-layer); "
                         "it converts norm-act-drop blocks and neuron/channel dropout only")
    return None


def eager_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``BatchNormActDrop2d`` / ``GroupNormActDrop`` replaced by
    ``nn.Sequential(nn.BatchNorm2d / nn.GroupNorm with the same state, nn.ReLU(), nn.Dropout2d(p)
    when p > 0)``, every type-0 ``ConvBlock`` (fused norm-ReLU-drop-conv) by that and its ``nn.Conv2d``,
    and ``DropNeuron`` / ``DropChannel`` by ``nn.Dropout`` / ``nn.Dropout2d``: the same network,
    weights and outputs (in eval mode; in training the dropout masks differ), in PyTorch's own
    modules. ``Residual`` with no drop-layer rate is a plain ``shortcut + branch`` and stays.
    ``model`` is left as it is."""
    twin = copy.deepcopy(model)
    replacement = _eager_module(twin)
    if replacement is not None:
        return replacement

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            new = _eager_module(child)
            if new is None:
                swap(child)
            else:
                setattr(parent, name, new)

    swap(twin)
    return twin
