"""Drop-neuron custom op: fallback, Triton dispatch, autograd (backward = same op on the gradient)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import masks
from .._layout import empty_dense_like
from ..backend import triton_kernels
from ._autograd import self_adjoint


def drop_neuron_torch(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Fallback: the documented 16-bit mask, generated with Philox in int64 arithmetic."""
    out = empty_dense_like(x)
    drop = masks.neuron_keep(x.numel(), seed, p, x.device).view(x.shape).logical_not_()
    torch.mul(x, masks.keep_scale(p), out=out)
    return out.masked_fill_(drop, 0)


kernels = triton_kernels("drop_neuron")


def _drop_neuron(x: Tensor, seed: Tensor, p: float, use_triton: bool) -> Tensor:
    if use_triton:
        return kernels.drop_neuron_triton(x, seed, p)
    return drop_neuron_torch(x, seed, p)


drop_neuron_op = self_adjoint("effdrop::drop_neuron", _drop_neuron,
                              lambda x, seed, p, use_triton: empty_dense_like(x))
