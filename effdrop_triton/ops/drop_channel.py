"""Drop-channel custom op: one draw per (sample, channel) map; backward = same op on the gradient.

The kernel is the unit gate shared with drop-path and drop-layer's gradient (``kernels/unit_gate.py``);
the fallback is the same gate in PyTorch (``masks.unit_gate_torch``), unit ``n * C + c``.
"""

from __future__ import annotations

from torch import Tensor

from .._layout import as_ncs, empty_dense_like, ncs
from ..backend import triton_kernels
from ..levels import DropLevel
from ..masks import unit_gate_torch
from ._autograd import self_adjoint

kernels = triton_kernels("unit_gate")


def _drop_channel(x: Tensor, seed: Tensor, p: float, use_triton: bool) -> Tensor:
    out = empty_dense_like(x)
    rule = dict(level=DropLevel.CHANNEL, per_sample=True, units_per_sample=x.shape[1])
    if use_triton:
        kernels.unit_gate_triton(ncs(x), ncs(out), seed, p, **rule)
    elif x.numel():
        unit_gate_torch(as_ncs(x), as_ncs(out), seed, p, **rule)
    return out


drop_channel_op = self_adjoint("effdrop::drop_channel", _drop_channel,
                               lambda x, seed, p, use_triton: empty_dense_like(x))
