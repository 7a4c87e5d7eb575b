"""Fused normalization -> affine -> ReLU -> drop-neuron / drop-channel custom op.

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

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import masks
from .._layout import empty_dense_like, is_channels_minor
from ..backend import triton_kernels
from ..levels import DropLevel
from ..masks import gate_factor, unit_keep_table
from ._autograd import Op
from .norm_stats import compute_dtype

kernels = triton_kernels("norm_act_drop")


class Tables:
    """The fallback's per-channel ``(1, C)`` (BatchNorm) or per-(sample, channel) ``(N, C)`` (GroupNorm)
    constants from the ``(2, R, G)`` statistics, with the kernels' operations (``rsqrt``, which on the
    CPU is the correctly rounded ``1 / sqrt`` the kernels compute; ``shift = bias - mean * scale``)."""

    def __init__(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor, num_groups: int,
                 eps: float):
        C = x.shape[1]
        cd = compute_dtype(x.dtype)
        stats = stats.to(cd)
        self.group_mean, self.group_invstd = stats[0], (stats[1] + eps).rsqrt_()  # (R, G)
        if num_groups:  # (N, G) -> (N, C)
            self.invstd = self.group_invstd.repeat_interleave(C // num_groups, dim=1)
            self.mean = self.group_mean.repeat_interleave(C // num_groups, dim=1)
        else:
            self.invstd, self.mean = self.group_invstd, self.group_mean
        self.weight = None if weight is None else weight.to(cd).view(1, C)
        self.scale = self.invstd if weight is None else self.weight * self.invstd
        self.shift = -(self.mean * self.scale)
        if bias is not None:
            self.shift = bias.to(cd).view(1, C) + self.shift


def channel_keep(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """(N, C) keep decisions of drop-channel for ``x`` (the units ``n * C + c`` of ``drop_channel``)."""
    N, C = x.shape[0], x.shape[1]
    return unit_keep_table(N, C, seed, p, level=DropLevel.CHANNEL, per_sample=True, units_per_sample=C,
                           device=x.device)


def neuron_drop(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Boolean drop mask of drop-neuron in ``x``'s logical shape (the mask of ``drop_neuron``)."""
    return masks.neuron_keep(x.numel(), seed, p, x.device).view(x.shape).logical_not_()


def folded_affine(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, level: Optional[int]):
    """``(scale', shift')`` broadcastable to ``x``: the affine with dropout's scale folded in
    (+0 for dropped channels). The Triton kernels fold with the same fp32 products."""
    scale, shift = tables.scale, tables.shift
    if level == DropLevel.CHANNEL:
        keep = channel_keep(x, seed, p)
        factor = masks.keep_scale(p)
        scale = torch.where(keep, scale * factor, 0.0)
        shift = torch.where(keep, shift * factor, 0.0)
    elif level == DropLevel.NEURON:
        factor = masks.keep_scale(p)
        scale, shift = scale * factor, shift * factor
    trailing = (1,) * (x.dim() - 2)
    return scale.view(*scale.shape, *trailing), shift.view(*shift.shape, *trailing)


def _upcast(x: Tensor) -> Tensor:
    cd = compute_dtype(x.dtype)
    return x if x.dtype == cd else x.to(cd)


def norm_act_drop_torch(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, act: bool,
                        level: Optional[int]) -> Tensor:
    """Fallback forward: ``relu(x * scale' + shift')`` then the neuron mask, in place on one fp32 buffer."""
    scale, shift = folded_affine(x, tables, seed, p, level)
    z = torch.mul(_upcast(x), scale)
    z.add_(shift)
    if act:
        z.relu_()
    if level == DropLevel.NEURON:
        z.masked_fill_(neuron_drop(x, seed, p), 0)
    return z if z.dtype == x.dtype else z.to(x.dtype)


def norm_act_drop_backward_torch(grad: Tensor, x: Tensor, tables: Tables, seed: Optional[Tensor], num_groups: int,
                                 batch_stats: bool, eps: float, act: bool, level: Optional[int], p: float):
    """Fallback backward: the gradient at the affine output (masks recomputed from ``x`` and the seed),
    then PyTorch's native BatchNorm / GroupNorm backward on it. Returns ``(dx, dparams)``, dparams the
    (2, C) weight and bias gradients."""
    N, C = x.shape[0], x.shape[1]
    x32 = _upcast(x)
    dz = _upcast(grad)
    if level == DropLevel.CHANNEL:
        gate = gate_factor(channel_keep(x, seed, p), p, x32.dtype)
        dz = dz * gate.view(N, C, *(1,) * (x.dim() - 2))
    elif level == DropLevel.NEURON:
        dz = (dz * masks.keep_scale(p)).masked_fill_(neuron_drop(x, seed, p), 0)
    if act:  # the ReLU mask: the recomputed (dropout-scaled) affine output is positive
        scale, shift = folded_affine(x, tables, seed, p, level)
        z = torch.mul(x32, scale).add_(shift)
        dz = torch.ops.aten.threshold_backward(dz, z, 0)
        del z
    weight = tables.weight.view(C) if tables.weight is not None else None
    mask = [True, True, True]
    trailing = (1,) * (x.dim() - 2)
    if num_groups:
        S = x.numel() // (N * C)
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            dz, x32, tables.group_mean, tables.group_invstd, weight, N, C, S, num_groups, mask)
    elif batch_stats:
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dz, x32, weight, None, None, tables.mean.view(C), tables.invstd.view(C), True, eps, mask)
    else:  # running statistics are constants: dx = weight * invstd * dz
        dx, dweight, dbias = dz * tables.scale.view(1, C, *trailing), None, dz.sum([0, *range(2, x.dim())])
    if dweight is None:  # the sum of dz * xhat, where the native kernel skipped it
        xhat = (x32 - tables.mean.view(*tables.mean.shape, *trailing)) * tables.invstd.view(*tables.invstd.shape, *trailing)
        dweight = (dz * xhat).sum([0, *range(2, x.dim())])
    return dx, torch.stack((dweight, dbias))


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
    dx, dparams = norm_act_drop_backward_torch(grad, x, tables, seed, num_groups, batch_stats, eps, act, level, p)
    if is_channels_minor(x) != is_channels_minor(dx) or dx.dtype != x.dtype:
        out = empty_dense_like(x)
        out.copy_(dx)
        dx = out
    return dx, dparams


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
