"""Drop-path: gate the paths of a multi-path transformation; the public function and its custom ops.

``drop_path_cat`` gates a list of branches straight into their concatenation and
``drop_path_split`` is its backward (gate the gradient, split it per branch); each is
the other's derivative. ``drop_path_groups`` gates the ``groups`` equal channel blocks
of one tensor and is its own derivative.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import Seed, check_float_tensor, check_groups, check_mode, check_p, check_seed, resolve_seed
from .._layout import as_ncs, empty_dense, empty_dense_like, is_channels_minor
from ..backend import triton_kernels, use_triton
from ..levels import DropLevel
from ..masks import gate_factor, unit_keep_table, zero_dropped
from ._autograd import Op, self_adjoint, traced
from .drop_channel import unit_gate


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
    return unit_gate(x, seed, p, use_triton, level=DropLevel.PATH, per_sample=per_sample, units_per_sample=groups,
                     channels_per_unit=x.shape[1] // groups)


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
