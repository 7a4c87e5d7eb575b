"""Fused normalization -> affine -> ReLU -> drop-neuron / drop-channel custom op.

The statistics come in as inputs (``effdrop::norm_stats`` or running statistics); this op
is the apply pass and its backward. Per channel (BatchNorm) or per (sample, channel)
(GroupNorm) the normalization and affine fold into ``scale = weight * invstd`` and
``shift = bias - mean * scale``, and dropout's ``1 / (1 - p)`` folds into both, so each
element costs ``y = relu(x * scale' + shift')`` and a keep test. Dropped channels use
``scale' = shift' = +0``, so they come out as exact zeros (for finite input).

Backward keeps only ``x``, the statistics, the affine parameters and the seed: it
recomputes the ReLU and dropout masks from them (no output, mask or normalized copy saved).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import philox
from .._layout import empty_dense_like, is_channels_minor
from ._autograd import call, define
from .norm_stats import compute_dtype
from .unit_gate import gate_factor, unit_keep_table

DROP_NONE, DROP_NEURON, DROP_CHANNEL = 0, 1, 2


class Tables:
    """Per-channel ``(1, C)`` (BatchNorm) or per-(sample, channel) ``(N, C)`` (GroupNorm) constants."""

    def __init__(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor,
                 num_groups: int, eps: float):
        N, C = x.shape[0], x.shape[1]
        cd = compute_dtype(x.dtype)
        self.invstd = (var.to(cd) + eps).rsqrt()
        self.mean = mean.to(cd)
        if num_groups:  # (N, G) -> (N, C)
            self.invstd = self.invstd.repeat_interleave(C // num_groups, dim=1)
            self.mean = self.mean.repeat_interleave(C // num_groups, dim=1)
        else:
            self.invstd, self.mean = self.invstd.view(1, C), self.mean.view(1, C)
        self.weight = None if weight is None else weight.to(cd).view(1, C)
        self.scale = self.invstd if weight is None else self.invstd * self.weight
        self.shift = -(self.mean * self.scale)
        if bias is not None:
            self.shift = bias.to(cd).view(1, C) + self.shift


def channel_keep(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """(N, C) keep decisions of drop-channel for ``x`` (the units ``n * C + c`` of ``drop_channel``)."""
    N, C = x.shape[0], x.shape[1]
    return unit_keep_table(N, C, seed, p, stream=philox.STREAM_CHANNEL, per_sample=True, units_per_sample=C,
                           device=x.device)


def neuron_drop(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Boolean drop mask of drop-neuron in ``x``'s logical shape (the mask of ``drop_neuron``)."""
    return philox.neuron_keep(x.numel(), seed, p, x.device).view(x.shape).logical_not_()


def folded_affine(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, drop: int):
    """``(scale', shift')`` broadcastable to ``x``: the affine with dropout's scale folded in
    (+0 for dropped channels). The Triton kernels fold with the same fp32 products."""
    scale, shift = tables.scale, tables.shift
    if drop == DROP_CHANNEL:
        keep = channel_keep(x, seed, p)
        factor = philox.keep_scale(p)
        scale = torch.where(keep, scale * factor, 0.0)
        shift = torch.where(keep, shift * factor, 0.0)
    elif drop == DROP_NEURON:
        factor = philox.keep_scale(p)
        scale, shift = scale * factor, shift * factor
    trailing = (1,) * (x.dim() - 2)
    return scale.view(*scale.shape, *trailing), shift.view(*shift.shape, *trailing)


def _upcast(x: Tensor) -> Tensor:
    cd = compute_dtype(x.dtype)
    return x if x.dtype == cd else x.to(cd)


def norm_act_drop_torch(x: Tensor, tables: Tables, seed: Optional[Tensor], p: float, act: bool, drop: int) -> Tensor:
    """Fallback forward: ``relu(x * scale' + shift')`` then the neuron mask, in place on one fp32 buffer."""
    scale, shift = folded_affine(x, tables, seed, p, drop)
    z = torch.mul(_upcast(x), scale)
    z.add_(shift)
    if act:
        z.relu_()
    if drop == DROP_NEURON:
        z.masked_fill_(neuron_drop(x, seed, p), 0)
    return z if z.dtype == x.dtype else z.to(x.dtype)


def norm_act_drop_backward_torch(grad: Tensor, x: Tensor, tables: Tables, mean: Tensor, var: Tensor,
                                 seed: Optional[Tensor], num_groups: int, batch_stats: bool, eps: float,
                                 act: bool, drop: int, p: float):
    """Fallback backward: the gradient at the affine output (masks recomputed from ``x`` and the seed),
    then PyTorch's native BatchNorm / GroupNorm backward on it."""
    N, C = x.shape[0], x.shape[1]
    x32 = _upcast(x)
    dz = _upcast(grad)
    if drop == DROP_CHANNEL:
        gate = gate_factor(channel_keep(x, seed, p), p, x32.dtype)
        dz = dz * gate.view(N, C, *(1,) * (x.dim() - 2))
    elif drop == DROP_NEURON:
        dz = (dz * philox.keep_scale(p)).masked_fill_(neuron_drop(x, seed, p), 0)
    if act:  # the ReLU mask: the recomputed (dropout-scaled) affine output is positive
        scale, shift = folded_affine(x, tables, seed, p, drop)
        z = torch.mul(x32, scale).add_(shift)
        dz = torch.ops.aten.threshold_backward(dz, z, 0)
        del z
    weight = tables.weight.view(C) if tables.weight is not None else None
    mask = [True, True, True]
    if num_groups:
        S = x.numel() // (N * C)
        rstd = (var.to(x32.dtype) + eps).rsqrt()
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            dz, x32, mean.to(x32.dtype), rstd, weight, N, C, S, num_groups, mask)
    elif batch_stats:
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dz, x32, weight, None, None, tables.mean.view(C), tables.invstd.view(C), True, eps, mask)
    else:
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dz, x32, weight, mean.to(x32.dtype), var.to(x32.dtype), None, None, False, eps, mask)
    if dweight is None:  # no weight: its gradient is the reduction the native kernel skipped
        dweight = torch.zeros(C, dtype=x32.dtype, device=x.device)
    return dx, dweight, dbias


def norm_act_drop_backward_triton(grad: Tensor, x: Tensor, tables: Tables, seed: Optional[Tensor], num_groups: int,
                                  batch_stats: bool, act: bool, drop: int, p: float):
    """Triton backward: per-(sample, channel) sums of ``dz`` and ``dz * xhat`` in one pass, then the
    input gradient ``k1 * dz + k2 * xhat + k3`` in a second pass (constants from the sums)."""
    from effdrop_triton.kernels.norm_act_drop import norm_act_drop_bwd_dx_triton, norm_act_drop_bwd_sums_triton

    N, C = x.shape[0], x.shape[1]
    sum_dz, sum_dz_xhat = norm_act_drop_bwd_sums_triton(grad, x, tables, seed, p, act, drop)  # (N, C) each
    dbias, dweight = sum_dz.sum(0), sum_dz_xhat.sum(0)
    k1 = tables.scale  # d(affine output) / d(x) at fixed statistics: weight * invstd
    if num_groups:  # GroupNorm: means over each (sample, group) of weight * dz and weight * dz * xhat
        count = (C // num_groups) * (x.numel() // (N * C))
        w = tables.weight if tables.weight is not None else torch.ones_like(sum_dz[:1])
        mean_dz = (w * sum_dz).view(N, num_groups, -1).sum(2).repeat_interleave(C // num_groups, 1) / count
        mean_dz_xhat = (w * sum_dz_xhat).view(N, num_groups, -1).sum(2).repeat_interleave(C // num_groups, 1) / count
        k2, k3 = -tables.invstd * mean_dz_xhat, -tables.invstd * mean_dz
    elif batch_stats:  # BatchNorm with batch statistics: means over (N, *spatial)
        count = x.numel() // C
        k2, k3 = -k1 * (dweight / count), -k1 * (dbias / count)
    else:  # running statistics: dx = k1 * dz
        k2 = k3 = None
    dx = norm_act_drop_bwd_dx_triton(grad, x, tables, k2, k3, seed, p, act, drop)
    return dx, dweight, dbias


def _forward(x, weight, bias, mean, var, seed, num_groups, eps, act, drop, p, use_triton):
    tables = Tables(x, weight, bias, mean, var, num_groups, eps)
    if use_triton:
        from effdrop_triton.kernels.norm_act_drop import norm_act_drop_fwd_triton

        return norm_act_drop_fwd_triton(x, tables, seed, p, act, drop)
    return norm_act_drop_torch(x, tables, seed, p, act, drop)


def _norm_act_drop(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor,
                   seed: Optional[Tensor], num_groups: int, batch_stats: bool, eps: float, act: bool, drop: int,
                   p: float, use_triton: bool) -> Tensor:
    """``drop(relu(norm(x) * weight + bias))`` with given statistics: ``mean``/``var`` are ``(C,)``
    (BatchNorm, batch or running) or ``(N, num_groups)`` (GroupNorm). ``batch_stats``: the
    statistics depend on ``x`` (backward adds their gradient). ``drop``: 0 none, 1 neuron, 2 channel."""
    if x.numel() == 0:
        return empty_dense_like(x)
    return _forward(x, weight, bias, mean, var, seed, num_groups, eps, act, drop, p, use_triton)


def _param_grad(grad: Tensor, like: Optional[Tensor]) -> Tensor:
    return grad if like is None else grad.to(like.dtype)


def _norm_act_drop_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                            mean: Tensor, var: Tensor, seed: Optional[Tensor], num_groups: int,
                            batch_stats: bool, eps: float, act: bool, drop: int, p: float,
                            use_triton: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias)`` of ``norm_act_drop`` (parameter gradients ``(C,)``, as
    if weight were ones / bias zeros when they are None)."""
    C = x.shape[1]
    cd = compute_dtype(x.dtype)
    if x.numel() == 0:
        return empty_dense_like(x), x.new_zeros(C, dtype=cd), x.new_zeros(C, dtype=cd)
    tables = Tables(x, weight, bias, mean, var, num_groups, eps)
    if use_triton:
        dx, dweight, dbias = norm_act_drop_backward_triton(grad, x, tables, seed, num_groups, batch_stats, act,
                                                           drop, p)
    else:
        dx, dweight, dbias = norm_act_drop_backward_torch(grad, x, tables, mean, var, seed, num_groups,
                                                          batch_stats, eps, act, drop, p)
    if is_channels_minor(x) != is_channels_minor(dx) or dx.dtype != x.dtype:
        out = empty_dense_like(x)
        out.copy_(dx)
        dx = out
    return dx, _param_grad(dweight, weight), _param_grad(dbias, bias)


def _norm_act_drop_backward_fake(grad, x, weight, bias, mean, var, seed, num_groups, batch_stats, eps, act, drop, p,
                                 use_triton):
    C = x.shape[1]
    cd = compute_dtype(x.dtype)
    return (empty_dense_like(x), x.new_empty(C, dtype=cd if weight is None else weight.dtype),
            x.new_empty(C, dtype=cd if bias is None else bias.dtype))


def _setup(ctx, inputs, output):
    x, weight, bias, mean, var, seed = inputs[:6]
    ctx.args = inputs[6:]
    ctx.save_for_backward(x, weight, bias, mean, var, seed)


def _backward(ctx, grad):
    x, weight, bias, mean, var, seed = ctx.saved_tensors
    dx, dweight, dbias = call(norm_act_drop_backward_op, grad, x, weight, bias, mean, var, seed, *ctx.args)
    return (dx, dweight if weight is not None else None, dbias if bias is not None else None,
            None, None, None) + (None,) * len(ctx.args)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("norm_act_drop does not support double backward (its backward is not differentiable); "
                       "use the eager composition for higher-order gradients")


norm_act_drop_backward_op = define("effdrop::norm_act_drop_backward", _norm_act_drop_backward,
                                   _norm_act_drop_backward_fake, _no_double_backward,
                                   lambda ctx, inputs, output: None)
norm_act_drop_op = define("effdrop::norm_act_drop", _norm_act_drop, lambda x, *args: empty_dense_like(x),
                          _backward, _setup)


def norm_act_drop_apply(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor,
                        seed: Optional[Tensor], num_groups: int, eps: float, act: bool, drop: int, p: float,
                        use_triton: bool) -> Tensor:
    """The forward pass without autograd (recomputation in ``norm_act_drop_conv2d``'s backward)."""
    if x.numel() == 0:
        return empty_dense_like(x)
    return _forward(x, weight, bias, mean, var, seed, num_groups, eps, act, drop, p, use_triton)

