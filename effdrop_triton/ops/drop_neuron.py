"""Drop-neuron: the public function, its custom op with autograd (backward = same op on the gradient), the
PyTorch fallback and the Triton dispatch."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import masks
from .._checks import Seed, check_float_tensor, check_p, check_seed, resolve_seed
from .._layout import empty_dense_like
from ..backend import triton_kernels, use_triton
from ._autograd import self_adjoint


def drop_neuron_torch(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Fallback: the documented 16-bit mask, generated with Philox in int64 arithmetic."""
    out = empty_dense_like(x)
    drop = masks.neuron_dropped(x, seed, p)
    torch.mul(x, masks.keep_scale(p), out=out)
    return out.masked_fill_(drop, 0)


kernels = triton_kernels("drop_neuron")


def _drop_neuron(x: Tensor, seed: Tensor, p: float, use_triton: bool) -> Tensor:
    if use_triton:
        return kernels.drop_neuron_triton(x, seed, p)
    return drop_neuron_torch(x, seed, p)


drop_neuron_op = self_adjoint("effdrop::drop_neuron", _drop_neuron,
                              lambda x, seed, p, use_triton: empty_dense_like(x))


def drop_neuron(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop single elements with probability ``p`` (as ``F.dropout``), scaling the rest by ``1 / (1 - p)``."""
    check_float_tensor(x, "x")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return drop_neuron_op(x, resolve_seed(seed, x.device), p, use_triton(x))
