"""Memory-layout helpers shared by the kernels' launchers and the fallback."""

from __future__ import annotations

import math

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True when memory runs (N, spatial..., C): channels_last / channels_last_3d and their kin."""
    return x.dim() >= 3 and x.movedim(1, -1).is_contiguous()


def is_sample_dense(x: torch.Tensor) -> bool:
    """True when every sample's elements fill one contiguous memory range (NCHW or channels_last)."""
    return x.dim() >= 1 and (x.is_contiguous() or is_channels_last(x))


def as_ncs(x: torch.Tensor) -> torch.Tensor:
    """View an (N, C, *) tensor as (N, C, S) (S = 1 for 2-d input); copies only when the
    spatial dims cannot be merged (the kernels take any N and C strides)."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def empty_dense(shape, channels_last: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (N, C, *) tensor, contiguous or channels-last-like (any rank >= 3)."""
    if channels_last and len(shape) >= 3:
        return torch.empty((shape[0], *shape[2:], shape[1]), dtype=dtype, device=device).movedim(-1, 1)
    return torch.empty(shape, dtype=dtype, device=device)


def is_channels_minor(x: torch.Tensor) -> bool:
    """Channels are the innermost memory axis (channels_last, or a channel slice of one)."""
    return x.dim() >= 3 and not x.is_contiguous() and x.stride(1) == 1


def empty_dense_like(x: torch.Tensor, shape=None) -> torch.Tensor:
    """``empty_dense`` keeping ``x``'s layout kind: channels_last stays channels_last."""
    shape = x.shape if shape is None else shape
    return empty_dense(shape, is_channels_minor(x), x.dtype, x.device)


def to_dense_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` itself if already in the asked layout, else a copy in it."""
    if channels_last and x.dim() >= 3:
        return x if is_channels_last(x) else x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.contiguous()


def per_sample_rows(x: torch.Tensor) -> torch.Tensor:
    """View a per-sample-dense tensor as (N, 1, M) in memory order."""
    N = x.shape[0]
    if x.is_contiguous():
        return x.reshape(N, 1, -1)
    return x.movedim(1, -1).reshape(N, 1, -1)
