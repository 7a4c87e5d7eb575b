"""``conv2d(norm_act_drop(x))`` as one custom op whose backward recomputes the convolution's input.

Eager PyTorch keeps the norm's input, the ReLU output, the dropout mask and the dropout
output (the convolution's input) for backward. This op keeps the block input, the
statistics, the affine and convolution parameters and the seed; backward runs the fused
apply pass once more to rebuild the convolution's input (as in-place activated BatchNorm
does), then the convolution's backward, then ``norm_act_drop``'s backward.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._layout import empty_dense_like
from ._autograd import Op
from .norm_act_drop import norm_act_drop_backward_op, norm_act_drop_op, param_grads


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
    stride, padding, dilation, groups = ctx.conv_args
    # the rebuild goes through the custom op, so that a compiled backward treats it as opaque
    # (tracing the Python fallback would read the seed as a data-dependent integer)
    y = norm_act_drop_op(x, weight, bias, stats, seed, *ctx.norm_args) if x.numel() else empty_dense_like(x)
    if y.dtype != conv_weight.dtype:
        y = y.to(conv_weight.dtype)
    bias_sizes = [conv_weight.shape[0]] if ctx.has_conv_bias else None
    grad_y, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward(
        grad_out, y, conv_weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
        [True, ctx.needs_input_grad[5], ctx.has_conv_bias and ctx.needs_input_grad[6]])
    del y
    if grad_y.dtype != x.dtype:
        grad_y = grad_y.to(x.dtype)
    dx, dparams = norm_act_drop_backward_op(grad_y, x, weight, bias, stats, seed, *ctx.norm_args)
    return (dx, *param_grads(dparams, weight, bias), None, None, grad_conv_weight, grad_conv_bias) + (None,) * 11


norm_act_drop_conv2d_op = Op("effdrop::norm_act_drop_conv2d", _norm_act_drop_conv2d, _fake, _backward, _setup,
                             grad_inputs=(0, 1, 2, 5, 6))
