"""Fused normalization -> affine -> ReLU -> drop-neuron / drop-channel: ``norm_act_drop``, its custom op
and the fused forward (``fused_norm_act_drop``: statistics op, seed, apply op), which the public
function, the conv variant and the fused norm-act-drop modules share.

The statistics come in as one ``(2, R, G)`` input (``effdrop::norm_stats``, or the running
statistics stacked); this op is the apply pass and its backward. Per channel (BatchNorm) or per
(sample, channel) (GroupNorm) the normalization and affine fold into ``scale = weight * invstd``
and ``shift = bias - mean * scale``, and dropout's ``1 / (1 - p)`` folds into both, so each
element costs ``y = relu(x * scale' + shift')`` and a keep test. Dropped channels use
``scale' = shift' = +0``, so they come out as exact zeros (for finite input). The Triton kernels
make those constants themselves, per program; the fallback builds them as ``Tables``.

Backward keeps only ``x``, the statistics, the affine parameters and the seed: it
recomputes the ReLU and dropout masks from them (no output, mask or normalized copy saved).
On the Triton path it is two launches (``kernels/norm_act_drop.py``).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import masks
from .._checks import Seed, check_float_tensor, check_p, check_seed, resolve_seed
from .._layout import empty_dense, empty_dense_like, is_channels_minor
from ..backend import triton_kernels, use_triton
from ..levels import INNER_LEVELS, DropLevel
from ..masks import unit_keep_table
from ._autograd import Op, traced
from .norm_stats import compute_dtype, norm_stats_op

kernels = triton_kernels("norm_act_drop")


class Tables:
    """The fallback's per-channel ``(1, C)`` (BatchNorm) or per-(sample, channel) ``(N, C)`` (GroupNorm)
    constants from the ``(2, R, G)`` statistics, with the kernels' operations (``invstd = 1 / sqrt(var +
    eps)``, each correctly rounded; ``shift = bias - mean * scale``). On the CPU they are computed in NumPy
    (a dozen operations on C numbers cost less there than the dispatch of one PyTorch operation) and
    ``host`` holds them; the tensor attributes are made when first read (views of the NumPy arrays)."""

    _TENSORS = ("group_mean", "group_invstd", "mean", "invstd", "weight", "scale", "shift")

    def __init__(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor, num_groups: int,
                 eps: float):
        C = x.shape[1]
        cd = compute_dtype(x.dtype)
        on_cpu = x.device.type == "cpu"
        xp = np if on_cpu else torch

        def values(t):
            t = t.detach() if t.dtype == cd else t.detach().to(cd)
            return t.numpy() if on_cpu else t

        group_mean, group_var = values(stats)  # (R, G) each
        group_invstd = 1 / xp.sqrt(group_var + eps)
        mean, invstd = group_mean, group_invstd
        if num_groups:  # (N, G) -> (N, C)
            repeat = (lambda a: np.repeat(a, C // num_groups, axis=1)) if on_cpu else (
                lambda a: a.repeat_interleave(C // num_groups, dim=1))
            mean, invstd = repeat(group_mean), repeat(group_invstd)
        w = None if weight is None else values(weight).reshape(1, C)
        scale = invstd if w is None else w * invstd
        shift = -(mean * scale) if bias is None else values(bias).reshape(1, C) - mean * scale
        arrays = dict(group_mean=group_mean, group_invstd=group_invstd, mean=mean, invstd=invstd, weight=w,
                      scale=scale, shift=shift)
        self.host = arrays if on_cpu else None
        if not on_cpu:
            self.__dict__.update(arrays)

    def __getattr__(self, name: str):
        # only on the CPU, for an attribute not read yet: the tensor view of its NumPy array
        if name not in Tables._TENSORS or self.__dict__.get("host") is None:
            raise AttributeError(name)
        array = self.host[name]
        value = None if array is None else torch.from_numpy(array)
        setattr(self, name, value)
        return value


class Folded(NamedTuple):
    """A call's dropout folded into the affine: ``z' = x * scale + shift`` (both broadcastable to ``x``) is
    the dropped, ``1 / (1 - p)``-scaled affine output, and ``factor`` that scale. Drop-channel's dropped
    (sample, channel) rows have ``scale = shift = +0``; drop-neuron's mask is ``bits`` (packed, CPU) or
    ``dropped`` (a boolean tensor, elsewhere), drawn once per call."""
    scale: Tensor
    shift: Tensor
    factor: float
    keep: Optional[Tensor] = None  # drop-channel's (N, C, 1...) keep table
    bits: Optional[Tensor] = None
    dropped: Optional[Tensor] = None


def channel_keep(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """(N, C) keep decisions of drop-channel for ``x`` (the units ``n * C + c`` of ``drop_channel``)."""
    N, C = x.shape[0], x.shape[1]
    return unit_keep_table(N, C, seed, p, level=DropLevel.CHANNEL, per_sample=True, units_per_sample=C,
                           device=x.device)


def fold(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, level: Optional[int]) -> Folded:
    """The call's :class:`Folded` affine and mask (in NumPy on the CPU, as :class:`Tables`). The Triton
    kernels fold with the same fp32 products."""
    on_cpu = tables.host is not None
    scale, shift = (tables.host["scale"], tables.host["shift"]) if on_cpu else (tables.scale, tables.shift)
    factor, keep, bits, dropped = 1.0, None, None, None
    trailing = (1,) * (x.dim() - 2)
    if level is not None:
        factor = masks.keep_scale(p)
        scale, shift = scale * factor, shift * factor
    if level == DropLevel.CHANNEL:
        keep = channel_keep(x, seed, p)
        where = np.where if on_cpu else torch.where
        keep_values = keep.numpy() if on_cpu else keep
        scale, shift = where(keep_values, scale, 0.0), where(keep_values, shift, 0.0)
        keep = keep.view(*keep.shape, *trailing)
    elif level == DropLevel.NEURON:
        if on_cpu:
            bits = masks.neuron_keep_bits(x.numel(), seed, p)
        else:
            dropped = masks.neuron_dropped(x, seed, p)
    if on_cpu:
        scale, shift = torch.from_numpy(scale), torch.from_numpy(shift)
    return Folded(scale.view(*scale.shape, *trailing), shift.view(*shift.shape, *trailing), factor, keep, bits, dropped)


def _upcast(x: Tensor) -> Tensor:
    cd = compute_dtype(x.dtype)
    return x if x.dtype == cd else x.to(cd)


def _drop_neurons(z: Tensor, folded: Folded) -> Tensor:
    if folded.bits is not None:
        masks.zero_dropped_elements(z, folded.bits)
        return z
    return z.masked_fill_(folded.dropped, 0) if folded.dropped is not None else z


# Samples per block of the fallback's elementwise passes: about this many elements, so that a block's three
# passes (multiply, add, ReLU) run in cache rather than three times through memory.
_BLOCK_ELEMENTS = 1 << 18


def affine_act(x: Tensor, folded: Folded, act: bool) -> Tensor:
    """``z' = x * scale' + shift'`` (then its ReLU, with ``act``) in the compute dtype and ``x``'s layout, rounded
    twice as the kernels do (``addcmul`` would fuse the multiply-add, as PyTorch's BatchNorm transform
    does), in blocks of samples."""
    cd = compute_dtype(x.dtype)
    z = empty_dense_like(x) if x.dtype == cd else empty_dense(x.shape, is_channels_minor(x), cd, x.device)
    N = x.shape[0]
    step = max(1, _BLOCK_ELEMENTS * N // max(x.numel(), 1))

    def blocks(t: Tensor):
        return t.split(step) if step < N else (t,)

    def constants(t: Tensor):  # per-channel constants serve every block; (N, C) ones are split with x
        return blocks(t) if t.shape[0] > 1 else itertools.repeat(t)

    for x_block, z_block, scale, shift in zip(blocks(x), blocks(z), constants(folded.scale), constants(folded.shift)):
        torch.mul(x_block, scale, out=z_block)
        z_block.add_(shift)
        if act:
            z_block.relu_()
    return z


def affine_act_drop_torch(x: Tensor, folded: Folded, act: bool) -> Tensor:
    """``relu(z')`` then the neuron mask, on one buffer in the compute dtype."""
    return _drop_neurons(affine_act(x, folded, act), folded)


def norm_act_drop_torch(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, act: bool,
                        level: Optional[int]) -> Tensor:
    """Fallback forward, in ``x``'s dtype."""
    z = affine_act_drop_torch(x, fold(x, tables, seed, p, level), act)
    return z if z.dtype == x.dtype else z.to(x.dtype)


def norm_act_drop_backward_torch(grad: Tensor, x: Tensor, tables: Tables, folded: Folded, num_groups: int,
                                 batch_stats: bool, eps: float, act: bool, activated: Optional[Tensor] = None):
    """Fallback backward: the gradient at the normalized output, then PyTorch's native BatchNorm / GroupNorm
    backward on it. Returns ``(dx, dparams)``, dparams the (2, C) weight and bias gradients.

    The dropout scale is uniform, so it folds into the weight the native backward multiplies by (and
    into the parameter gradients), and where there is a ReLU the dropped units need no pass of their
    own: their ``z'`` is +0, not positive. ``activated``: the forward's output in the compute dtype (with
    ``act``: positive exactly where the gradient passes), when the caller has it; else ``z'`` is recomputed
    and the neuron mask applied."""
    N, C = x.shape[0], x.shape[1]
    x32 = _upcast(x)
    dz = _upcast(grad)
    if act:
        # z' is positive exactly where the gradient passes: the ReLU itself need not be recomputed
        dz = torch.ops.aten.threshold_backward.default(dz, affine_act(x, folded, False) if activated is None else activated,
                                                       0)
    elif folded.keep is not None:  # drop-channel without a ReLU: gate the dropped rows
        dz = dz * folded.keep
    if (folded.bits is not None or folded.dropped is not None) and not (act and activated is not None):
        dz = _drop_neurons(dz if dz is not grad else dz.clone(), folded)
    factor = folded.factor
    weight = tables.weight.view(C) if tables.weight is not None else None
    scaled_weight = (weight if weight is not None else x32.new_ones(C)) * factor if factor != 1.0 else weight
    mask = [True, True, True]
    trailing = (1,) * (x.dim() - 2)
    if num_groups:
        S = x.numel() // (N * C)
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward.default(
            dz, x32, tables.group_mean, tables.group_invstd, scaled_weight, N, C, S, num_groups, mask)
    elif batch_stats:
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward.default(
            dz, x32, scaled_weight, None, None, tables.mean.view(C), tables.invstd.view(C), True, eps, mask)
    else:  # running statistics are constants: dx = weight * invstd * dz
        dx, dweight, dbias = dz * (tables.scale.view(1, C, *trailing) * factor), None, dz.sum([0, *range(2, x.dim())])
    if dweight is None:  # the sum of dz * xhat, where the native kernel skipped it
        xhat = (x32 - tables.mean.view(*tables.mean.shape, *trailing)) * tables.invstd.view(*tables.invstd.shape, *trailing)
        dweight = (dz * xhat).sum([0, *range(2, x.dim())])
    dparams = torch.stack((dweight, dbias))
    if is_channels_minor(x) != is_channels_minor(dx) or dx.dtype != x.dtype:
        dx = empty_dense_like(x).copy_(dx)
    return dx, dparams.mul_(factor) if factor != 1.0 else dparams


def _norm_act_drop(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor, seed: Optional[Tensor],
                   num_groups: int, eps: float, act: bool, level: Optional[int], p: float, batch_stats: bool,
                   use_triton: bool) -> Tensor:
    """``drop(relu(norm(x) * weight + bias))`` with given statistics: ``stats`` is ``(2, 1, C)`` (BatchNorm,
    batch or running mean and variance) or ``(2, N, num_groups)`` (GroupNorm). ``batch_stats``: the
    statistics depend on ``x`` (backward adds their gradient). ``level``: ``DropLevel.NEURON`` or ``CHANNEL``,
    or None for no dropout."""
    if x.numel() == 0:
        return empty_dense_like(x)
    if use_triton:
        return kernels.norm_act_drop_fwd_triton(x, weight, bias, stats, seed, num_groups, eps, p, act, level)
    return norm_act_drop_torch(x, Tables(x, weight, bias, stats, num_groups, eps), seed, p, act, level)


def _norm_act_drop_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor,
                            seed: Optional[Tensor], num_groups: int, eps: float, act: bool, level: Optional[int], p: float,
                            batch_stats: bool, use_triton: bool) -> Tuple[Tensor, Tensor]:
    """``(grad_x, dparams)`` of ``norm_act_drop``: dparams is the (2, C) gradient of weight and bias in
    the compute dtype (as if weight were ones / bias zeros when they are None)."""
    C = x.shape[1]
    if x.numel() == 0:
        return empty_dense_like(x), x.new_zeros((2, C), dtype=compute_dtype(x.dtype))
    coupled = batch_stats or num_groups > 0
    if use_triton:
        return kernels.norm_act_drop_bwd_triton(grad, x, weight, bias, stats, seed, num_groups, eps, p, act, level, coupled)
    tables = Tables(x, weight, bias, stats, num_groups, eps)
    return norm_act_drop_backward_torch(grad, x, tables, fold(x, tables, seed, p, level), num_groups, batch_stats, eps,
                                        act)


def _backward_fake(grad, x, weight, bias, stats, seed, num_groups, eps, act, level, p, batch_stats, use_triton):
    return empty_dense_like(x), x.new_empty((2, x.shape[1]), dtype=compute_dtype(x.dtype))


def param_grads(dparams: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]):
    """The weight and bias gradients (None for absent parameters) in the parameters' dtypes."""
    dweight = None if weight is None else (dparams[0] if dparams.dtype == weight.dtype else dparams[0].to(weight.dtype))
    dbias = None if bias is None else (dparams[1] if dparams.dtype == bias.dtype else dparams[1].to(bias.dtype))
    return dweight, dbias


def _setup(ctx, inputs, output):
    x, weight, bias, stats, seed = inputs[:5]
    ctx.args = inputs[5:]
    ctx.save_for_backward(x, weight, bias, stats, seed)


def _backward(ctx, grad):
    x, weight, bias, stats, seed = ctx.saved_tensors
    dx, dparams = norm_act_drop_backward_op(grad, x, weight, bias, stats, seed, *ctx.args)
    return (dx, *param_grads(dparams, weight, bias), None, None) + (None,) * len(ctx.args)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("norm_act_drop does not support double backward (its backward is not differentiable); "
                       "use the eager composition for higher-order gradients")


norm_act_drop_backward_op = Op("effdrop::norm_act_drop_backward", _norm_act_drop_backward, _backward_fake,
                               _no_double_backward, lambda ctx, inputs, output: None, grad_inputs=(0, 1, 2, 3))
norm_act_drop_op = Op("effdrop::norm_act_drop", _norm_act_drop, lambda x, *args: empty_dense_like(x),
                      _backward, _setup, grad_inputs=(0, 1, 2))


# --- the public function: checks, settings and the forward every caller (modules too) goes through ---

_NORMS = ("bn", "gn")


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


def batch_or_running_stats(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], settings: NormSettings,
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
    stats = batch_or_running_stats(x, running_mean, running_var, settings, triton)
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


# the conv variant builds on this op (its module imports this one), so it comes in last
from .norm_act_drop_conv2d import norm_act_drop_conv2d_op  # noqa: E402
