"""Normalization statistics custom op: per-channel (BatchNorm) and per-(sample, group) (GroupNorm)
mean and biased variance, in fp32 (fp64 for fp64 input), from one read of the input.

Both backends reduce to partial moments (count, mean, sum of squared deviations) and merge
them with Chan et al.'s parallel rule, so no sum-of-squares cancellation ever happens. The
GroupNorm path gets the per-channel statistics (variance-shift tracking) from the same partials.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import math

import torch
from torch import Tensor

from ._autograd import define


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and elementwise math run in fp32 (fp64 for fp64 input)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def combine_moments(mean: Tensor, m2: Tensor, count: Tensor, dims: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Merge partial moments along ``dims`` (Chan et al.): returns the mean and the biased variance.

    ``count`` (broadcastable to ``mean``) is the number of values behind each partial.
    """
    count = count.to(mean.dtype).expand_as(mean)
    total = count.sum(dims, keepdim=True)
    mu = (mean * count).sum(dims, keepdim=True) / total
    # the spread of the partial means around the total mean: a sum of squares of small differences
    m2 = m2.sum(dims, keepdim=True) + (count * (mean - mu).square()).sum(dims, keepdim=True)
    return mu.squeeze(dims), (m2 / total).squeeze(dims)


def _outputs(x: Tensor, num_groups: int, channel_stats: bool):
    N, C = x.shape[0], x.shape[1]
    dtype = compute_dtype(x.dtype)
    group_shape = (N, num_groups) if num_groups else (0,)
    channel_shape = (C,) if channel_stats else (0,)
    return [x.new_empty(shape, dtype=dtype) for shape in (group_shape, group_shape, channel_shape, channel_shape)]


def norm_stats_torch(x: Tensor, num_groups: int, channel_stats: bool):
    """Fallback: the native two-pass batch statistics for BatchNorm; per-(sample, channel)
    moments merged per group and per channel for GroupNorm."""
    N, C = x.shape[0], x.shape[1]
    cd = compute_dtype(x.dtype)
    xc = x if x.dtype == cd else x.to(cd)  # fp16/bf16: statistics in fp32
    def empty():  # outputs must not alias each other
        return x.new_empty((0,), dtype=cd)

    if num_groups == 0:
        mean, var = torch.batch_norm_update_stats(xc, None, None, 0.0)
        return empty(), empty(), mean, var
    S = x.numel() // (N * C) if N * C else 0
    if x.dim() == 2:  # one value per (sample, channel)
        mean_nc, m2_nc = xc, torch.zeros_like(xc)
    else:
        var_nc, mean_nc = torch.var_mean(xc, dim=tuple(range(2, x.dim())), correction=0)
        m2_nc = var_nc * S
    count = torch.tensor(float(S), dtype=cd, device=x.device)
    group_mean, group_var = combine_moments(mean_nc.view(N, num_groups, C // num_groups),
                                            m2_nc.view(N, num_groups, C // num_groups), count, (2,))
    if not channel_stats:
        return group_mean, group_var, empty(), empty()
    channel_mean, channel_var = combine_moments(mean_nc, m2_nc, count, (0,))
    return group_mean, group_var, channel_mean, channel_var


def _norm_stats(x: Tensor, num_groups: int, channel_stats: bool,
                use_triton: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(group_mean, group_var, channel_mean, channel_var)`` of an ``(N, C, *)`` tensor.

    Group statistics are ``(N, num_groups)`` (empty when ``num_groups == 0``, BatchNorm);
    channel statistics are ``(C,)`` over ``(N, *spatial)`` (empty unless ``channel_stats``).
    Variances are biased (divided by the count).
    """
    if x.numel() == 0:
        return tuple(t.fill_(math.nan) for t in _outputs(x, num_groups, channel_stats))
    if use_triton:
        from effdrop_triton.kernels.norm_stats import partial_moments_triton

        N, C = x.shape[0], x.shape[1]
        mean, m2, count = partial_moments_triton(x)  # (N, C, K), (N, C, K), (K,)
        outs = _outputs(x, num_groups, channel_stats)
        if num_groups:
            shape = (N, num_groups, C // num_groups, mean.shape[2])
            outs[0], outs[1] = combine_moments(mean.view(shape), m2.view(shape), count, (2, 3))
        if channel_stats:
            outs[2], outs[3] = combine_moments(mean, m2, count, (0, 2))
        return tuple(outs)
    return norm_stats_torch(x, num_groups, channel_stats)


norm_stats_op = define("effdrop::norm_stats", _norm_stats,
                       lambda x, num_groups, channel_stats, use_triton: tuple(_outputs(x, num_groups, channel_stats)))
