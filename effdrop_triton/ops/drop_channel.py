"""Drop-channel: one draw per (sample, channel) map; the public function and its custom op (backward = the
same op on the gradient).

The kernel is the unit gate shared with drop-path and drop-layer's gradient (``kernels/unit_gate.py``);
the fallback is the same gate in PyTorch (``masks.unit_gate_torch``), unit ``n * C + c``.
"""

from __future__ import annotations

from torch import Tensor

from .._checks import Seed, check_float_tensor, check_p, check_seed, resolve_seed
from .._layout import as_ncs, empty_dense_like, ncs
from ..backend import triton_kernels, use_triton
from ..levels import DropLevel
from ..masks import unit_gate_torch
from ._autograd import self_adjoint

kernels = triton_kernels("unit_gate")


def unit_gate(x: Tensor, seed: Tensor, p: float, use_triton: bool, **rule) -> Tensor:
    """``x`` with every (sample, channel) row scaled by its unit's gate, ``rule`` as ``masks.unit_keep_table``'s:
    drop-channel here, drop-path over channel groups in ``drop_path``."""
    out = empty_dense_like(x)
    if use_triton:
        kernels.unit_gate_triton(ncs(x), ncs(out), seed, p, **rule)
    elif x.numel():
        unit_gate_torch(as_ncs(x), as_ncs(out), seed, p, **rule)
    return out


def _drop_channel(x: Tensor, seed: Tensor, p: float, use_triton: bool) -> Tensor:
    return unit_gate(x, seed, p, use_triton, level=DropLevel.CHANNEL, per_sample=True, units_per_sample=x.shape[1])


drop_channel_op = self_adjoint("effdrop::drop_channel", _drop_channel,
                               lambda x, seed, p, use_triton: empty_dense_like(x))


def drop_channel(x: Tensor, p: float, training: bool = True, seed: Seed = None) -> Tensor:
    """Drop whole (sample, channel) maps of an ``(N, C, *)`` tensor (as ``F.dropout2d`` / ``dropout3d``)."""
    check_float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"drop_channel needs an (N, C, *) tensor with at least 2 dims, got shape {tuple(x.shape)}")
    p = check_p(p)
    check_seed(seed)
    if not training or p == 0.0:
        return x
    return drop_channel_op(x, resolve_seed(seed, x.device), p, use_triton(x))
