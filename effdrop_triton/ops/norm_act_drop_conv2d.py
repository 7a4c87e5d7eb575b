"""``norm_act_drop_conv2d``: ``conv2d(norm_act_drop(x))`` as one custom op whose backward recomputes the
convolution's input.

Eager PyTorch keeps the norm's input, the ReLU output, the dropout mask and the dropout
output (the convolution's input) for backward. This op keeps the block input, the
statistics, the affine and convolution parameters and the seed; backward runs the fused
apply pass once more to rebuild the convolution's input (as in-place activated BatchNorm
does), then the convolution's backward, then ``norm_act_drop``'s backward.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import Seed, check_float_tensor
from .._layout import empty_dense_like
from ._autograd import Op, traced
from .norm_act_drop import (Tables, _norm_act_drop_args, affine_act_drop_torch, fold, fused_norm_act_drop,
                            norm_act_drop_backward_op, norm_act_drop_backward_torch, norm_act_drop_op, param_grads)


def _norm_act_drop_conv2d(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor,
                          seed: Optional[Tensor], conv_weight: Tensor, conv_bias: Optional[Tensor],
                          stride: List[int], padding: List[int], dilation: List[int], groups: int,
                          num_groups: int, eps: float, act: bool, level: Optional[int], p: float, batch_stats: bool,
                          use_triton: bool) -> Tensor:
    """``conv2d(norm_act_drop(x, ...), conv_weight, conv_bias, ...)``; the arguments after ``groups`` are
    those of ``effdrop::norm_act_drop``."""
    y = norm_act_drop_op.impl(x, weight, bias, stats, seed, num_groups, eps, act, level, p, batch_stats, use_triton)
    # the convolution computes in its weight's dtype (the autocast dtype under autocast)
    if y.dtype != conv_weight.dtype:
        y = y.to(conv_weight.dtype)
    return F.conv2d(y, conv_weight, conv_bias, stride, padding, dilation, groups)


def _fake(x, weight, bias, stats, seed, conv_weight, conv_bias, stride, padding, dilation, groups, *args):
    return F.conv2d(empty_dense_like(x).to(conv_weight.dtype), conv_weight, conv_bias, stride, padding, dilation, groups)


def _setup(ctx, inputs, output):
    x, weight, bias, stats, seed, conv_weight, conv_bias = inputs[:7]
    ctx.conv_args = inputs[7:11]
    ctx.norm_args = inputs[11:]
    ctx.has_conv_bias = conv_bias is not None
    # never the convolution's input: backward rebuilds it from x
    ctx.save_for_backward(x, weight, bias, stats, seed, conv_weight)


def _backward(ctx, grad_out):
    x, weight, bias, stats, seed, conv_weight = ctx.saved_tensors
    num_groups, eps, act, level, p, batch_stats, use_triton = ctx.norm_args
    # create_graph=True runs backward with grad enabled: the ops (whose backward is not differentiable) again
    eager_fallback = not use_triton and x.numel() and not torch.is_grad_enabled() and not traced(grad_out)
    activated = None
    if eager_fallback:  # the constants and the mask once for both passes; the rebuilt output gives the ReLU mask
        tables = Tables(x, weight, bias, stats, num_groups, eps)
        folded = fold(x, tables, seed, p, level)
        y = activated = affine_act_drop_torch(x, folded, act)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
    else:
        # the rebuild goes through the custom op, so that a compiled backward treats it as opaque
        # (tracing the Python fallback would read the seed as a data-dependent integer)
        y = norm_act_drop_op(x, weight, bias, stats, seed, *ctx.norm_args) if x.numel() else empty_dense_like(x)
    if y.dtype != conv_weight.dtype:
        y = y.to(conv_weight.dtype)
    if activated is not None and activated.dtype != y.dtype:
        activated = None  # the cast copy is the convolution's: recompute the ReLU mask rather than keep both
    stride, padding, dilation, groups = ctx.conv_args
    bias_sizes = [conv_weight.shape[0]] if ctx.has_conv_bias else None
    grad_y, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward.default(
        grad_out, y, conv_weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
        [True, ctx.needs_input_grad[5], ctx.has_conv_bias and ctx.needs_input_grad[6]])
    del y
    if grad_y.dtype != x.dtype:
        grad_y = grad_y.to(x.dtype)
    if eager_fallback:
        dx, dparams = norm_act_drop_backward_torch(grad_y, x, tables, folded, num_groups, batch_stats, eps, act,
                                                   activated)
    else:
        dx, dparams = norm_act_drop_backward_op(grad_y, x, weight, bias, stats, seed, *ctx.norm_args)
    return (dx, *param_grads(dparams, weight, bias), None, None, grad_conv_weight, grad_conv_bias) + (None,) * 11


norm_act_drop_conv2d_op = Op("effdrop::norm_act_drop_conv2d", _norm_act_drop_conv2d, _fake, _backward, _setup,
                             grad_inputs=(0, 1, 2, 5, 6))


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
