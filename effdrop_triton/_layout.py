"""Memory-layout helpers shared by the kernels' launchers and the fallback."""

from __future__ import annotations

import functools
import math

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True when memory runs (N, spatial..., C): channels_last / channels_last_3d and their kin."""
    dim = x.dim()
    if dim == 4:  # the memory-format checks are one C call; movedim makes a view
        return x.is_contiguous(memory_format=torch.channels_last)
    if dim == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return dim >= 3 and x.movedim(1, -1).is_contiguous()


def is_sample_dense(x: torch.Tensor) -> bool:
    """True when every sample's elements fill one contiguous memory range (NCHW or channels_last)."""
    return x.dim() >= 1 and (x.is_contiguous() or is_channels_last(x))


def as_ncs(x: torch.Tensor) -> torch.Tensor:
    """View an (N, C, *) tensor as (N, C, S) (S = 1 for 2-d input); copies only when the
    spatial dims cannot be merged (the kernels take any N and C strides)."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


@functools.lru_cache(maxsize=4096)
def _ncs_geometry(shape, strides):
    """``((N, C, S), (sn, sc, ss))`` of the given sizes and strides, or None when the spatial dims do not
    merge into one stride."""
    if len(shape) == 2:
        return (shape[0], shape[1], 1), (strides[0], strides[1], 1)
    S, ss, expected = 1, None, None
    for size, stride in zip(reversed(shape[2:]), reversed(strides[2:])):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return None
        ss = stride if ss is None else ss
        expected = stride * size
        S *= size
    return (shape[0], shape[1], S), (strides[0], strides[1], 1 if ss is None else ss)


def ncs(x: torch.Tensor):
    """``(x, (N, C, S), (sn, sc, ss))``: the memory of an (N, C, *) tensor (S = 1 for 2-d input) seen as
    (N, C, S) without making a view (a view costs the host more than a kernel launch); ``x`` is a
    contiguous copy when its spatial dims cannot be merged (the kernels take any N and C strides)."""
    geometry = _ncs_geometry(x.shape, x.stride())
    if geometry is None:
        x = x.contiguous()
        geometry = _ncs_geometry(x.shape, x.stride())
    return x, geometry[0], geometry[1]


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
    if shape is None:  # the common cases first, without building the shape
        if x.is_contiguous():  # preserve_format keeps a dense tensor's strides
            return torch.empty_like(x)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.empty_like(x, memory_format=torch.channels_last)
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
