"""Drop-layer: the public function and its custom ops, the fused residual add ``shortcut + gate * branch / (1 - p)``
and the per-sample gate of its branch gradient (``layer_gate``, its own derivative)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import Seed, check_float_tensor, check_mode, check_p, check_seed, resolve_seed
from .._layout import empty_dense_like, is_channels_last, is_sample_dense, per_sample_rows, to_dense_layout
from ..backend import triton_kernels, use_triton
from ..levels import DropLevel
from ..masks import gate_factor, host_bits, unit_gate_torch, unit_keep_table
from ._autograd import Op, self_adjoint

kernels = triton_kernels("drop_layer")
unit_gate_kernels = triton_kernels("unit_gate")


def _layer_inputs(branch: Tensor, shortcut: Tensor):
    """Branch and shortcut in one per-sample-dense layout (the shortcut's, when it has one)."""
    if shortcut.is_contiguous() and branch.is_contiguous():
        return branch, shortcut
    channels_last = not shortcut.is_contiguous() and is_channels_last(shortcut)
    shortcut = to_dense_layout(shortcut, channels_last)
    branch = branch if branch.stride() == shortcut.stride() else to_dense_layout(branch, channels_last)
    return branch, shortcut


def drop_layer_torch(branch: Tensor, shortcut: Tensor, out: Tensor, seed: Tensor, p: float, per_sample: bool) -> None:
    """Fallback: one ``addcmul`` pass, then the shortcut itself for dropped samples (as the kernel,
    which never reads their branch: no NaN from a non-finite dropped branch)."""
    N = branch.shape[0]
    keep = unit_keep_table(N, 1, seed, p, level=DropLevel.LAYER, per_sample=per_sample,
                           units_per_sample=1, device=branch.device)
    factor = gate_factor(keep, p, branch.dtype).view(N, *([1] * (branch.dim() - 1)))
    if branch.dtype == factor.dtype:
        torch.addcmul(shortcut, branch, factor, out=out)
    else:  # fp16/bf16: add in fp32, round once
        out.copy_(torch.addcmul(shortcut.to(factor.dtype), branch, factor))
    dropped = ~keep.view(N)
    if out.device.type == "cpu":  # copy only the dropped samples (no device sync on the CPU)
        index = np.flatnonzero(dropped.numpy())
        host_bits(out)[index] = host_bits(shortcut)[index]
    else:
        torch.where(dropped.view(factor.shape), shortcut, out, out=out)


def _layer_output(branch: Tensor, shortcut: Tensor, use_triton: bool) -> Tensor:
    return empty_dense_like(_layer_inputs(branch, shortcut)[1] if use_triton else shortcut)


def _drop_layer(branch: Tensor, shortcut: Tensor, seed: Tensor, p: float, per_sample: bool,
                use_triton: bool) -> Tensor:
    if not use_triton:
        out = empty_dense_like(shortcut)
        if out.numel():
            drop_layer_torch(branch, shortcut, out, seed, p, per_sample)
        return out
    # the kernel walks each sample's memory: branch, shortcut and output in one layout
    branch, shortcut = _layer_inputs(branch, shortcut)
    out = empty_dense_like(shortcut)
    kernels.drop_layer_triton(branch, shortcut, out, seed, p, per_sample)
    return out


def _layer_gate(x: Tensor, seed: Tensor, p: float, per_sample: bool, use_triton: bool) -> Tensor:
    """``x * gate[n] / (1 - p)``: the gradient of the branch of ``drop_layer``."""
    x = x if is_sample_dense(x) else x.contiguous()
    out = empty_dense_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    if use_triton:  # each sample's memory as one row: (N, 1, M) with unit strides
        N = x.shape[0]
        rows = ((N, 1, numel // N), (x.stride(0), x.stride(0), 1))  # a 16-divisible C stride keeps vectors
        unit_gate_kernels.unit_gate_triton((x, *rows), (out, *rows), seed, p, level=DropLevel.LAYER,
                                           per_sample=per_sample, units_per_sample=1)
    else:
        unit_gate_torch(per_sample_rows(x), per_sample_rows(out), seed, p, level=DropLevel.LAYER,
                        per_sample=per_sample, units_per_sample=1)
    return out


layer_gate_op = self_adjoint(
    "effdrop::layer_gate", _layer_gate,
    lambda x, seed, p, per_sample, use_triton: empty_dense_like(x if is_sample_dense(x) else x.contiguous()))


def _setup_layer(ctx, inputs, output):
    _, _, seed, ctx.p, ctx.per_sample, ctx.use_triton = inputs
    ctx.save_for_backward(seed)


def _backward_layer(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad_branch = layer_gate_op(grad, seed, ctx.p, ctx.per_sample, ctx.use_triton)
    return grad_branch, grad, None, None, None, None


drop_layer_op = Op(
    "effdrop::drop_layer", _drop_layer,
    lambda branch, shortcut, seed, p, per_sample, use_triton: _layer_output(branch, shortcut, use_triton),
    _backward_layer, _setup_layer, grad_inputs=(0, 1))


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
