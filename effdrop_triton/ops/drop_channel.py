"""Drop-channel custom op: one draw per (sample, channel) map; backward = same op on the gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import philox
from .._layout import as_ncs, empty_dense_like
from ._autograd import register_self_adjoint
from .unit_gate import unit_gate


@torch.library.custom_op("effdrop::drop_channel", mutates_args=())
def drop_channel_op(x: Tensor, seed: Tensor, p: float, use_triton: bool) -> Tensor:
    out = empty_dense_like(x)
    if x.numel():
        unit_gate(as_ncs(x), as_ncs(out), seed, p, use_triton,
                  stream=philox.STREAM_CHANNEL, per_sample=True, units_per_sample=x.shape[1])
    return out


@drop_channel_op.register_fake
def _(x, seed, p, use_triton):
    return empty_dense_like(x)


register_self_adjoint(drop_channel_op)
