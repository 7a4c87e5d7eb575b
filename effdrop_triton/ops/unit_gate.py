"""The shared (sample, channel-range) gate behind drop-channel, drop-path and drop-layer's
branch gradient: the PyTorch fallback and the dispatch to the Triton kernel."""

from __future__ import annotations

import torch

from .. import masks
from .._layout import as_ncs, ncs
from ..backend import triton_kernels
from ..levels import DropLevel

kernels = triton_kernels("unit_gate")


def unit_keep_table(N: int, C: int, seed: torch.Tensor, p: float, *, stream: int, per_sample: bool,
                    units_per_sample: int, unit_base: int = 0, channels_per_unit: int = 1,
                    device=None) -> torch.Tensor:
    """(N, C) boolean keep decision of every (sample, channel), by the documented unit rule.

    One Philox call per distinct unit; channels of one unit share its decision.
    """
    device = seed.device if device is None else device
    units = unit_base + torch.arange(-(-C // channels_per_unit), dtype=torch.int64, device=device)
    if per_sample:
        units = torch.arange(N, dtype=torch.int64, device=device)[:, None] * units_per_sample + units
    keep = masks.unit_keep(units, seed.to(device), stream, p).view(-1 if per_sample else 1, units.shape[-1])
    if channels_per_unit > 1:
        keep = keep.repeat_interleave(channels_per_unit, dim=1)[:, :C]
    return keep.expand(N, C)


def gate_factor(keep: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """Per-unit multiplier ``keep / (1 - p)`` in the compute dtype (fp32, fp64 for fp64)."""
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return keep.to(compute_dtype).mul_(masks.keep_scale(p))


def zero_dropped(dst: torch.Tensor, keep: torch.Tensor) -> None:
    """Write +0.0 into the dropped (n, c) rows of an (N, C, S) view, as the kernels do: the
    multiply by 0 leaves NaN for non-finite inputs and -0.0 for negative ones."""
    dropped = ~keep
    if dst.device.type == "cpu":  # touch only the dropped rows (no device sync on the CPU)
        n, c = dropped.nonzero(as_tuple=True)
        dst[n, c] = 0
    else:
        dst.masked_fill_(dropped[:, :, None], 0)


def unit_gate_torch(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, **rule) -> None:
    """Fallback: ``dst = src * keep / (1 - p)`` for (N, C, S) views."""
    N, C, _ = src.shape
    keep = unit_keep_table(N, C, seed, p, device=src.device, **rule)
    torch.mul(src, gate_factor(keep, p, src.dtype)[:, :, None], out=dst)
    zero_dropped(dst, keep)


def unit_gate(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, use_triton: bool, **rule) -> None:
    """``dst = src * keep / (1 - p)`` for (N, C, *) tensors (spatial dims merged)."""
    if use_triton:
        kernels.unit_gate_triton(ncs(src), ncs(dst), seed, p, **rule)
    else:
        unit_gate_torch(as_ncs(src), as_ncs(dst), seed, p, **rule)


def path_gate(srcs, dsts, seed: torch.Tensor, p: float, per_sample: bool, use_triton: bool) -> None:
    """Gate path ``i`` of a multi-path block: ``dsts[i] = srcs[i] * keep[n, i] / (1 - p)`` for (N, C_i, *) tensors."""
    paths = len(srcs)
    if use_triton:
        kernels.path_gate_triton(srcs, dsts, seed, p, per_sample)
        return
    # the fallback draws the (N, paths) table once for all paths
    N = srcs[0].shape[0]
    keep = unit_keep_table(N, paths, seed, p, stream=DropLevel.PATH, per_sample=per_sample,
                           units_per_sample=paths, device=srcs[0].device)
    factor = gate_factor(keep, p, srcs[0].dtype)
    for index, (src, dst) in enumerate(zip(srcs, dsts)):
        src, dst = as_ncs(src), as_ncs(dst)
        torch.mul(src, factor[:, index, None, None], out=dst)
        zero_dropped(dst, keep[:, index, None].expand(N, dst.shape[1]))
