"""The four structural dropout levels as functions, and the fused norm-act-drop(-conv) ops.

Each validates its arguments, returns its input unchanged when ``training`` is False
or ``p == 0`` (no kernel launch), draws a seed from PyTorch's default generator when
none is given, and calls the ``effdrop`` op on the selected backend (``ops._autograd.Op``: its
implementation in a plain ``autograd.Function`` when nothing traces the call).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .ops.drop_channel import drop_channel_op
from .ops.drop_layer import drop_layer_op
from .ops.drop_neuron import drop_neuron_op
from .ops.drop_path import drop_path_cat_op, drop_path_groups_op
from .ops.norm_act_drop import norm_act_drop_op
from .ops.norm_act_drop_conv2d import norm_act_drop_conv2d_op
from .ops._autograd import traced
from .ops.norm_stats import norm_stats_op
from ._checks import check_float_tensor, check_groups, check_mode, check_p, check_seed, resolve_seed
from .backend import use_triton
from .levels import DropLevel

Seed = Union[int, Tensor, None]


def drop_neuron(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop single elements with probability ``p`` (as ``F.dropout``), scaling the rest by ``1 / (1 - p)``."""
    check_float_tensor(x, "x")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return drop_neuron_op(x, resolve_seed(seed, x.device), p, use_triton(x))


def drop_channel(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop whole (sample, channel) maps of an ``(N, C, *)`` tensor (as ``F.dropout2d`` / ``dropout3d``)."""
    check_float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"drop_channel needs an (N, C, *) tensor with at least 2 dims, got shape {tuple(x.shape)}")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return drop_channel_op(x, resolve_seed(seed, x.device), p, use_triton(x))


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
        return drop_path_groups_op(x, resolve_seed(seed, x.device), p, groups, per_sample, use_triton(x))
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
    return drop_path_cat_op(branches, resolve_seed(seed, first.device), p, per_sample, use_triton(first))


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
    return drop_layer_op(branch, shortcut, resolve_seed(seed, branch.device), p, per_sample, use_triton(branch))


# --- fused norm -> affine -> ReLU -> dropout (the prologue of the norm-ReLU-drop-conv block) ---

_NORMS = ("bn", "gn")
INNER_LEVELS = (DropLevel.NEURON, DropLevel.CHANNEL)  # the levels that act inside a norm or conv block


def _check_param(t, name: str, x: Tensor) -> None:
    if t is None:
        return
    check_float_tensor(t, name)
    if t.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape ({x.shape[1]},) (the channels of x), got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


def _check_real(value, name: str, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be a number >= {minimum}, got {value}")
    return value


def _norm_act_drop_args(x, weight, bias, running_mean, running_var, norm, num_groups, training, use_batch_stats,
                        momentum, num_batches_tracked, eps, act, drop_type, p, seed, input_stats) -> "NormSettings":
    """Validate ``norm_act_drop``'s arguments; returns the resolved settings."""
    check_float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"norm_act_drop needs an (N, C, *) tensor with at least 2 dims, got shape {tuple(x.shape)}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    level = DropLevel.parse(drop_type, "drop_type", INNER_LEVELS)
    for name, flag in (("training", training), ("act", act), ("input_stats", input_stats)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    if use_batch_stats is not None and not isinstance(use_batch_stats, bool):
        raise TypeError(f"use_batch_stats must be None or a bool, got {type(use_batch_stats).__name__} {use_batch_stats!r}")
    _check_param(weight, "weight", x)
    _check_param(bias, "bias", x)
    _check_param(running_mean, "running_mean", x)
    _check_param(running_var, "running_var", x)
    p = check_p(p)
    check_seed(seed)
    eps = _check_real(eps, "eps", 0.0)
    if momentum is None:
        if not (isinstance(num_batches_tracked, Tensor) and num_batches_tracked.dim() == 0
                and not num_batches_tracked.is_floating_point() and num_batches_tracked.device == x.device):
            raise ValueError("momentum=None (a cumulative average) needs num_batches_tracked, a 0-d integer tensor on "
                             f"x's device counting this batch, got {num_batches_tracked!r}")
    else:
        momentum = _check_real(momentum, "momentum")
        num_batches_tracked = None
    C = x.shape[1]
    if norm == "gn":
        if running_mean is not None or running_var is not None:
            raise ValueError("norm='gn' keeps no running statistics: pass running_mean=None and running_var=None")
        if use_batch_stats is False:
            raise ValueError("norm='gn' always normalizes with the statistics of each sample; use_batch_stats=False is BatchNorm only")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
            raise ValueError(f"num_groups must be a positive int dividing the {C} channels of x, got {num_groups!r}")
        groups, batch_stats = num_groups, True
    else:
        if num_groups is not None:
            raise ValueError(f"num_groups={num_groups!r} applies to norm='gn' only")
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must be given together (or both None)")
        groups = 0
        batch_stats = use_batch_stats if use_batch_stats is not None else (training or running_mean is None)
        if not batch_stats and running_mean is None:
            raise ValueError("normalizing with running statistics (use_batch_stats=False) needs running_mean and running_var")
        count = x.numel() // C if C else 0
        if batch_stats and count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    return NormSettings(groups, batch_stats, 0.0 if momentum is None else momentum, num_batches_tracked, eps, act,
                        level if training and p > 0.0 else None, p)


class NormSettings(NamedTuple):
    """The resolved settings of a norm-act-drop call (what the ops take besides tensors)."""
    num_groups: int  # 0: BatchNorm
    batch_stats: bool  # normalize with this batch's statistics (and update the running ones, when given)
    momentum: float
    num_batches_tracked: Optional[Tensor]  # momentum=None: the cumulative average's weight is 1 / this
    eps: float
    act: bool
    level: Optional[DropLevel]  # NEURON or CHANNEL; None: no dropout (eval, or p == 0)
    p: float


def norm_stats(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], settings: NormSettings,
               triton: bool) -> Tensor:
    """The ``(2, R, G)`` statistics the apply pass normalizes with. BatchNorm with batch statistics
    updates the running ones in place, as ``F.batch_norm`` does; with running statistics they are
    stacked into a copy (later in-place updates of the buffers must not change this call's backward)."""
    if settings.batch_stats:
        # the statistics are not differentiated through (the fused op's formula covers them); a traced call
        # must say so, the eager one skips the view
        return norm_stats_op(x.detach() if traced(x) else x, running_mean, running_var,
                             settings.num_batches_tracked, settings.num_groups, settings.momentum, triton)
    return torch.stack((running_mean, running_var)).view(2, 1, x.shape[1])


def input_channel_stats(x: Tensor):
    """Per-channel fp32 mean and biased variance of an ``(N, C, *)`` tensor over ``(N, *spatial)``, detached."""
    var, mean = torch.var_mean(x.detach().float(), dim=[0, *range(2, x.dim())], correction=0)
    return mean, var


def norm_act_drop(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                  running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None, *, norm: str = "bn",
                  num_groups: Optional[int] = None, training: bool = True, use_batch_stats: Optional[bool] = None,
                  momentum: Optional[float] = 0.1, num_batches_tracked: Optional[Tensor] = None, eps: float = 1e-5,
                  act: bool = True, drop_type: Union[str, int] = "channel", p: float = 0.0, seed: Seed = None,
                  input_stats: bool = False):
    """norm -> affine -> ReLU (``act``) -> drop-neuron / drop-channel (``drop_type`` "neuron"/"channel" or 0/1), fused.

    ``norm="bn"`` (BatchNorm) or ``"gn"`` (GroupNorm with ``num_groups``). ``training``: dropout is
    active (and, for BatchNorm, batch statistics are the default). ``use_batch_stats`` (BatchNorm
    only): None -> ``training`` or running statistics absent, as ``nn.BatchNorm2d``. BatchNorm with
    batch statistics and running statistics given updates ``running_mean``/``running_var`` in place
    like ``F.batch_norm`` (``momentum`` is the exponential factor; the variance is unbiased), on the
    device; ``momentum=None`` is the cumulative average, with weight ``1 / num_batches_tracked``
    read on the device (a 0-d integer tensor that already counts this batch, as ``nn.BatchNorm2d``'s).
    The dropout mask is the one ``drop_neuron`` / ``drop_channel`` draws for the same seed and shape.

    Backward keeps ``x`` and the statistics (nothing else per element) and recomputes the masks.
    ``input_stats=True`` returns ``(y, (mean_c, var_c))``: the per-channel fp32 mean and biased
    variance of ``x`` over ``(N, *spatial)``, detached.
    """
    settings = _norm_act_drop_args(x, weight, bias, running_mean, running_var, norm, num_groups, training,
                                   use_batch_stats, momentum, num_batches_tracked, eps, act, drop_type, p, seed,
                                   input_stats)
    return fused_norm_act_drop(x, weight, bias, running_mean, running_var, settings, seed, input_stats)


def fused_norm_act_drop(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], settings: NormSettings, seed: Seed = None,
                        input_stats: bool = False, conv: Optional[tuple] = None):
    """``norm_act_drop`` (or, with ``conv = (conv_weight, conv_bias, stride, padding, dilation, groups)``,
    ``norm_act_drop_conv2d``) with checked arguments: the statistics op, the seed draw and the fused op."""
    triton = use_triton(x)
    stats = norm_stats(x, running_mean, running_var, settings, triton)
    seed_tensor = None if settings.level is None else resolve_seed(seed, x.device)
    args = (settings.num_groups, settings.eps, settings.act, settings.level, settings.p, settings.batch_stats, triton)
    if conv is None:
        y = norm_act_drop_op(x, weight, bias, stats, seed_tensor, *args)
    else:
        y = norm_act_drop_conv2d_op(x, weight, bias, stats, seed_tensor, *conv, *args)
    if not input_stats:
        return y
    if settings.batch_stats and not settings.num_groups and x.dtype != torch.float64:
        return y, (stats[0, 0], stats[1, 0])  # BatchNorm's batch statistics are the input's
    return y, input_channel_stats(x)


def _pair(value, name: str) -> list:
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return list(value)  # nn.Conv2d's own settings: checked first
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _conv_padding(padding, conv_weight: Tensor, dilation: list) -> list:
    """Padding as a pair of ints; "valid" is 0, "same" the symmetric padding when one exists."""
    if padding == "valid":
        return [0, 0]
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, conv_weight.shape[2:])]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even effective kernel size needs asymmetric padding, "
                             "which norm_act_drop_conv2d does not support; pass explicit padding")
        return [t // 2 for t in total]
    return _pair(padding, "padding")


def _conv_compute_params(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor]):
    """The convolution's parameters in the dtype it computes in. Under autocast that is the autocast
    dtype, as for ``F.conv2d``: the casts are ordinary autograd ops, so fp32 parameters still get fp32
    gradients, and the op casts the normalized input to match. Outside autocast the dtypes must agree."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return conv_weight.to(dtype), None if conv_bias is None else conv_bias.to(dtype)
    if conv_weight.dtype != x.dtype or (conv_bias is not None and conv_bias.dtype != x.dtype):
        raise ValueError(f"norm_act_drop_conv2d needs x, conv_weight and conv_bias of one dtype outside autocast, got "
                         f"{x.dtype}, {conv_weight.dtype} and {None if conv_bias is None else conv_bias.dtype}")
    return conv_weight, conv_bias


def norm_act_drop_conv2d(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                         running_var: Optional[Tensor], conv_weight: Tensor, conv_bias: Optional[Tensor] = None,
                         stride=1, padding=0, dilation=1, groups: int = 1, *, norm: str = "bn",
                         num_groups: Optional[int] = None, training: bool = True,
                         use_batch_stats: Optional[bool] = None, momentum: Optional[float] = 0.1,
                         num_batches_tracked: Optional[Tensor] = None, eps: float = 1e-5, act: bool = True,
                         drop_type: Union[str, int] = "channel", p: float = 0.0, seed: Seed = None,
                         input_stats: bool = False):
    """``conv2d(norm_act_drop(x, ...), conv_weight, conv_bias, stride, padding, dilation, groups)`` whose
    backward recomputes the convolution's input from ``x``: it saves ``x``, the statistics, the seed
    and the parameters, never the convolution's input. Keyword arguments as ``norm_act_drop``."""
    settings = _norm_act_drop_args(x, weight, bias, running_mean, running_var, norm, num_groups, training,
                                   use_batch_stats, momentum, num_batches_tracked, eps, act, drop_type, p, seed,
                                   input_stats)
    check_float_tensor(conv_weight, "conv_weight")
    if x.dim() != 4 or conv_weight.dim() != 4:
        raise ValueError(f"norm_act_drop_conv2d needs 4-d x and conv_weight, got shapes {tuple(x.shape)} and {tuple(conv_weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or x.shape[1] % groups or conv_weight.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing in and out channels, got {groups!r}")
    if conv_weight.shape[1] * groups != x.shape[1]:
        raise ValueError(f"conv_weight of shape {tuple(conv_weight.shape)} with groups={groups} expects "
                         f"{conv_weight.shape[1] * groups} input channels, x has {x.shape[1]}")
    if conv_bias is not None:
        check_float_tensor(conv_bias, "conv_bias")
        if conv_bias.shape != (conv_weight.shape[0],):
            raise ValueError(f"conv_bias must have shape ({conv_weight.shape[0]},), got {tuple(conv_bias.shape)}")
    return fused_norm_act_drop(x, weight, bias, running_mean, running_var, settings, seed, input_stats,
                               conv_args(x, conv_weight, conv_bias, stride, padding, dilation, groups))


def conv_args(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], stride, padding, dilation, groups: int):
    """The convolution's arguments as the fused op takes them (pairs as lists, parameters in the dtype
    the convolution computes in)."""
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = _conv_padding(padding, conv_weight, dilation)
    conv_weight, conv_bias = _conv_compute_params(x, conv_weight, conv_bias)
    return conv_weight, conv_bias, stride, padding, dilation, groups
