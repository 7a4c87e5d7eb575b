"""The shared (sample, channel-range) gate behind drop-channel, drop-path and drop-layer's
branch gradient: the PyTorch fallback and the dispatch to the Triton kernel."""

from __future__ import annotations

import torch

from .. import philox


def unit_keep_table(N: int, C: int, seed: torch.Tensor, p: float, *, stream: int, per_sample: bool,
                    units_per_sample: int, unit_base: int = 0, channels_per_unit: int = 1,
                    device=None) -> torch.Tensor:
    """(N, C) boolean keep decision of every (sample, channel), by the documented unit rule."""
    device = seed.device if device is None else device
    units = unit_base + torch.arange(C, dtype=torch.int64, device=device) // channels_per_unit
    if per_sample:
        units = torch.arange(N, dtype=torch.int64, device=device)[:, None] * units_per_sample + units
    else:
        units = units.expand(N, C).contiguous()
    return philox.unit_keep(units, seed.to(device), stream, p)


def unit_gate_torch(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, **rule) -> None:
    """Fallback: ``dst = src * keep / (1 - p)`` for (N, C, S) views."""
    N, C, _ = src.shape
    if p >= 1.0:
        dst.zero_()
        return
    keep = unit_keep_table(N, C, seed, p, device=src.device, **rule)
    compute_dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    factor = keep.to(compute_dtype).mul_(philox.keep_scale(p))
    torch.mul(src, factor[:, :, None], out=dst)


def unit_gate(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, use_triton: bool, **rule) -> None:
    if use_triton:
        from effdrop_triton.kernels.unit_gate import unit_gate_triton

        unit_gate_triton(src, dst, seed, p, **rule)
    else:
        unit_gate_torch(src, dst, seed, p, **rule)
