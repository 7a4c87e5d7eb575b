"""Drop-neuron: the public function, its custom ops with autograd, the PyTorch fallback and the Triton
dispatch.

``effdrop::drop_neuron`` (Triton, and the fallback off the CPU) saves only the seed: its backward is the
same op on the gradient, regenerating the mask. On the CPU, where regenerating costs about twenty times
the multiply, ``effdrop::drop_neuron_packed`` returns the mask packed to one bit per element beside the
output and saves that (``ceil(numel / 8)`` bytes, a 32nd of what ``F.dropout`` keeps in fp32); its backward
gates the gradient with those bits (``effdrop::neuron_bits_gate``, its own derivative).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import masks
from .._checks import Seed, check_float_tensor, check_p, check_seed, resolve_seed
from .._layout import empty_dense_like
from ..backend import triton_kernels, use_triton
from ._autograd import Op, self_adjoint


def drop_neuron_torch(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Fallback off the CPU: the documented 16-bit mask, generated with Philox in int64 arithmetic."""
    out = empty_dense_like(x)
    drop = masks.neuron_dropped(x, seed, p)
    torch.mul(x, masks.keep_scale(p), out=out)
    return out.masked_fill_(drop, 0)


def _neuron_bits_gate(x: Tensor, bits: Tensor, p: float) -> Tensor:
    """``x`` scaled by ``1 / (1 - p)`` where its bit in the packed CPU mask is set, +0.0 elsewhere."""
    out = empty_dense_like(x)
    masks.gate_elements(x, out, bits, masks.keep_scale(p))
    return out


neuron_bits_gate_op = self_adjoint("effdrop::neuron_bits_gate", _neuron_bits_gate,
                                   lambda x, bits, p: empty_dense_like(x))


def _drop_neuron_packed(x: Tensor, seed: Tensor, p: float) -> Tuple[Tensor, Tensor]:
    bits = masks.neuron_keep_bits(x.numel(), seed, p)
    return _neuron_bits_gate(x, bits, p), bits


def _setup_packed(ctx, inputs, output):
    ctx.p = inputs[2]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _backward_packed(ctx, grad, _):
    (bits,) = ctx.saved_tensors
    return neuron_bits_gate_op(grad, bits, ctx.p), None, None


drop_neuron_packed_op = Op(
    "effdrop::drop_neuron_packed", _drop_neuron_packed,
    lambda x, seed, p: (empty_dense_like(x), x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)),
    _backward_packed, _setup_packed)


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
    triton = use_triton(x)
    if triton or x.device.type != "cpu":
        return drop_neuron_op(x, resolve_seed(seed, x.device), p, triton)
    return drop_neuron_packed_op(x, resolve_seed(seed, x.device), p)[0]
