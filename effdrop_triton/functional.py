"""The four structural dropout levels as functions (SPEC section 3).

Each validates its arguments, returns its input unchanged when ``training`` is False
or ``p == 0`` (no kernel launch), draws a seed from PyTorch's default generator when
none is given, and calls the ``effdrop`` custom op on the selected backend.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import ops  # noqa: F401  (registers torch.ops.effdrop)
from ._checks import check_float_tensor, check_groups, check_mode, check_p, check_seed, resolve_seed
from .backend import use_triton

Seed = Union[int, Tensor, None]


def drop_neuron(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop single elements with probability ``p`` (as ``F.dropout``), scaling the rest by ``1 / (1 - p)``."""
    check_float_tensor(x, "x")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return torch.ops.effdrop.drop_neuron(x, resolve_seed(seed, x.device), p, use_triton(x))


def drop_channel(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop whole (sample, channel) maps of an ``(N, C, *)`` tensor (as ``F.dropout2d`` / ``dropout3d``)."""
    check_float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"drop_channel needs an (N, C, *) tensor with at least 2 dims, got shape {tuple(x.shape)}")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return torch.ops.effdrop.drop_channel(x, resolve_seed(seed, x.device), p, use_triton(x))


def _check_branches(branches: Sequence[Tensor]) -> list:
    branches = list(branches)
    if not branches:
        raise ValueError("drop_path needs at least one branch, got an empty list")
    first = check_float_tensor(branches[0], "branches[0]")
    if first.dim() < 2:
        raise ValueError(f"drop_path branches must be (N, C, *) tensors, branches[0] has shape {tuple(first.shape)}")
    for i, branch in enumerate(branches[1:], start=1):
        check_float_tensor(branch, f"branches[{i}]")
        if branch.dim() != first.dim() or branch.shape[0] != first.shape[0] or branch.shape[2:] != first.shape[2:]:
            raise ValueError(
                f"drop_path branches must share N and spatial size: branches[0] has shape {tuple(first.shape)}, "
                f"branches[{i}] has shape {tuple(branch.shape)}"
            )
        if branch.dtype != first.dtype:
            raise ValueError(f"drop_path branches must share a dtype: branches[0] is {first.dtype}, branches[{i}] is {branch.dtype}")
        if branch.device != first.device:
            raise ValueError(f"drop_path branches must share a device: branches[0] is on {first.device}, branches[{i}] on {branch.device}")
    return branches


def drop_path(branches: Union[Tensor, Sequence[Tensor]], p: float, training: bool = True, mode: str = "sample",
              groups: Optional[int] = None, seed: Seed = None) -> Tensor:
    """Drop paths of a multi-path transformation; the output is the gated paths concatenated on dim 1.

    ``branches`` is a list of ``(N, C_i, *)`` tensors, or one ``(N, C, *)`` tensor whose
    channels form ``groups`` equal paths. ``mode="sample"`` draws per (sample, path),
    ``"batch"`` per path for the whole batch.
    """
    per_sample = check_mode(mode)
    if isinstance(branches, Tensor):
        x = check_float_tensor(branches, "branches")
        if groups is None:
            raise ValueError("drop_path on a single tensor needs groups=G (its channels form G paths); pass a list of branches otherwise")
        check_groups(groups)
        if x.dim() < 2 or x.shape[1] % groups:
            raise ValueError(f"groups={groups} must divide the channel dim of branches, got shape {tuple(x.shape)}")
        p = check_p(p)
        check_seed(seed)
        if not training or p == 0.0:
            return x
        return torch.ops.effdrop.drop_path_groups(x, resolve_seed(seed, x.device), p, groups, per_sample, use_triton(x))
    if groups is not None:
        raise ValueError(f"groups={groups!r} applies to a single tensor; a list of branches already names its paths")
    if not isinstance(branches, (list, tuple)):
        raise TypeError(f"branches must be a tensor or a list of tensors, got {type(branches).__name__}")
    branches = _check_branches(branches)
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return torch.cat(branches, dim=1)
    first = branches[0]
    return torch.ops.effdrop.drop_path_cat(branches, resolve_seed(seed, first.device), p, per_sample, use_triton(first))


def drop_layer(branch: Tensor, shortcut: Tensor, p: float, training: bool = True, mode: str = "sample",
               seed: Seed = None) -> Tensor:
    """Fused residual add with a dropped branch: ``shortcut + gate * branch / (1 - p)``.

    ``mode="sample"`` drops the branch of single samples (stochastic depth, ``"row"``),
    ``"batch"`` of the whole batch.
    """
    per_sample = check_mode(mode)
    check_float_tensor(branch, "branch")
    check_float_tensor(shortcut, "shortcut")
    if branch.shape != shortcut.shape:
        raise ValueError(f"drop_layer needs branch and shortcut of one shape, got {tuple(branch.shape)} and {tuple(shortcut.shape)}")
    if branch.dtype != shortcut.dtype:
        raise ValueError(f"drop_layer needs branch and shortcut of one dtype, got {branch.dtype} and {shortcut.dtype}")
    if branch.device != shortcut.device:
        raise ValueError(f"drop_layer needs branch and shortcut on one device, got {branch.device} and {shortcut.device}")
    if branch.dim() < 1:
        raise ValueError("drop_layer needs (N, *) tensors, got 0-d tensors")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return shortcut + branch
    return torch.ops.effdrop.drop_layer(branch, shortcut, resolve_seed(seed, branch.device), p, per_sample, use_triton(branch))
