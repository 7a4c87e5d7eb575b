"""Drop-path custom ops: gate the paths of a multi-path transformation.

``drop_path_cat`` gates a list of branches straight into their concatenation and
``drop_path_split`` is its backward (gate the gradient, split it per branch); each is
the other's derivative. ``drop_path_groups`` gates the ``groups`` equal channel blocks
of one tensor and is its own derivative.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .._layout import as_ncs, empty_dense, empty_dense_like, is_channels_minor, ncs
from ..backend import triton_kernels
from ..levels import DropLevel
from ..masks import gate_factor, unit_gate_torch, unit_keep_table, zero_dropped
from ._autograd import Op, self_adjoint, traced


kernels = triton_kernels("unit_gate")


def path_gate(srcs, dsts, seed: Tensor, p: float, per_sample: bool, use_triton: bool) -> None:
    """Gate path ``i`` of a multi-path block: ``dsts[i] = srcs[i] * keep[n, i] / (1 - p)`` for (N, C_i, *) tensors."""
    if use_triton:
        kernels.path_gate_triton(srcs, dsts, seed, p, per_sample)
        return
    # the fallback draws the (N, paths) table once for all paths
    N, paths = srcs[0].shape[0], len(srcs)
    keep = unit_keep_table(N, paths, seed, p, level=DropLevel.PATH, per_sample=per_sample, units_per_sample=paths,
                           device=srcs[0].device)
    factor = gate_factor(keep, p, srcs[0].dtype)
    for index, (src, dst) in enumerate(zip(srcs, dsts)):
        src, dst = as_ncs(src), as_ncs(dst)
        torch.mul(src, factor[:, index, None, None], out=dst)
        zero_dropped(dst, keep[:, index, None].expand(N, dst.shape[1]))


def _cat_output(branches: List[Tensor]) -> Tensor:
    first = branches[0]
    shape = (first.shape[0], sum(b.shape[1] for b in branches), *first.shape[2:])
    # channels-minor branches (channels_last tensors or channel slices of one) give a channels_last output
    channels_last = not first.is_contiguous() and all(is_channels_minor(b) for b in branches)
    return empty_dense(shape, channels_last, first.dtype, first.device)


def _split_outputs(grad: Tensor, sizes: List[int]) -> List[Tensor]:
    N, spatial = grad.shape[0], grad.shape[2:]
    if grad.is_contiguous():
        return [grad.new_empty((N, size, *spatial)) for size in sizes]
    return [empty_dense_like(grad, (N, size, *spatial)) for size in sizes]


def _drop_path_cat(branches: List[Tensor], seed: Tensor, p: float, per_sample: bool, use_triton: bool) -> Tensor:
    out = _cat_output(branches)
    path_gate(branches, out.split([b.shape[1] for b in branches], dim=1), seed, p, per_sample, use_triton)
    return out


def _drop_path_split(grad: Tensor, seed: Tensor, p: float, per_sample: bool, sizes: List[int],
                     use_triton: bool) -> List[Tensor]:
    outs = _split_outputs(grad, sizes)
    path_gate(grad.split(sizes, dim=1), outs, seed, p, per_sample, use_triton)
    return outs


def _drop_path_groups(x: Tensor, seed: Tensor, p: float, groups: int, per_sample: bool, use_triton: bool) -> Tensor:
    out = empty_dense_like(x)
    rule = dict(level=DropLevel.PATH, per_sample=per_sample, units_per_sample=groups,
                channels_per_unit=x.shape[1] // groups)
    if use_triton:
        kernels.unit_gate_triton(ncs(x), ncs(out), seed, p, **rule)
    elif x.numel():
        unit_gate_torch(as_ncs(x), as_ncs(out), seed, p, **rule)
    return out


drop_path_groups_op = self_adjoint("effdrop::drop_path_groups", _drop_path_groups,
                                   lambda x, seed, p, groups, per_sample, use_triton: empty_dense_like(x))


def _setup_cat(ctx, inputs, output):
    branches, seed, ctx.p, ctx.per_sample, ctx.use_triton = inputs
    ctx.sizes = [b.shape[1] for b in branches]
    ctx.save_for_backward(seed)


def _backward_cat(ctx, grad):
    (seed,) = ctx.saved_tensors
    return drop_path_split_op(grad, seed, ctx.p, ctx.per_sample, ctx.sizes, ctx.use_triton), None, None, None, None


def _setup_split(ctx, inputs, output):
    _, seed, ctx.p, ctx.per_sample, _, ctx.use_triton = inputs
    ctx.save_for_backward(seed)


def _backward_split(ctx, grads):
    (seed,) = ctx.saved_tensors
    return drop_path_cat_op(list(grads), seed, ctx.p, ctx.per_sample, ctx.use_triton), None, None, None, None, None


class _DropPathCat(torch.autograd.Function):
    """The eager path of ``drop_path_cat``: the branches as separate arguments (autograd tracks no list)."""

    @staticmethod
    def forward(ctx, seed, p, per_sample, use_triton, *branches):
        branches = list(branches)
        _setup_cat(ctx, (branches, seed, p, per_sample, use_triton), None)
        return _drop_path_cat(branches, seed, p, per_sample, use_triton)

    @staticmethod
    def backward(ctx, grad):
        return (None, None, None, None, *_backward_cat(ctx, grad)[0])


class _DropPathSplit(torch.autograd.Function):
    """The eager path of ``drop_path_split``: its outputs as a tuple (autograd tracks no list)."""

    @staticmethod
    def forward(ctx, grad, seed, p, per_sample, sizes, use_triton):
        _setup_split(ctx, (grad, seed, p, per_sample, sizes, use_triton), None)
        return tuple(_drop_path_split(grad, seed, p, per_sample, sizes, use_triton))

    @staticmethod
    def backward(ctx, *grads):
        return _backward_split(ctx, grads)


class _ListOp(Op):
    """An op with a list input or output: the eager ``autograd.Function`` is written out for it."""

    __slots__ = ()

    def __call__(self, *args):
        first = args[0]
        if traced(first[0] if isinstance(first, list) else first):
            return self.op(*args)
        if torch.is_grad_enabled():
            if isinstance(first, list):
                if any(b.requires_grad for b in first):
                    return self.function.apply(*args[1:], *first)
            elif first.requires_grad:
                return list(self.function.apply(*args))
        return self.impl(*args)


drop_path_cat_op = _ListOp("effdrop::drop_path_cat", _drop_path_cat,
                           lambda branches, seed, p, per_sample, use_triton: _cat_output(branches),
                           _backward_cat, _setup_cat, function=_DropPathCat)
drop_path_split_op = _ListOp("effdrop::drop_path_split", _drop_path_split,
                             lambda grad, seed, p, per_sample, sizes, use_triton: _split_outputs(grad, sizes),
                             _backward_split, _setup_split, function=_DropPathSplit)
