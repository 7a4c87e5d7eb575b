"""Normalization statistics custom op: the per-channel (BatchNorm) or per-(sample, group) (GroupNorm)
mean and biased variance of an (N, C, *) tensor as one ``(2, R, G)`` tensor, in fp32 (fp64 for fp64
input), with BatchNorm's running statistics updated in place from the same pass, as ``F.batch_norm``.

On the Triton path that is two launches and two allocations and nothing else: partial moments,
then their merge and the running-statistics update on the device (``kernels/norm_stats.py``),
so no statistic passes through the host and nothing synchronizes.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..backend import triton_kernels
from ._autograd import Op

kernels = triton_kernels("norm_stats")


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


def stats_shape(x: Tensor, num_groups: int):
    return (2, x.shape[0], num_groups) if num_groups else (2, 1, x.shape[1])


def norm_stats_torch(x: Tensor, num_groups: int) -> Tensor:
    """Fallback statistics: the native two-pass batch statistics for BatchNorm; per-(sample, channel)
    moments merged per group for GroupNorm."""
    N, C = x.shape[0], x.shape[1]
    cd = compute_dtype(x.dtype)
    x = x.detach()
    xc = x if x.dtype == cd else x.to(cd)  # fp16/bf16: statistics in fp32
    if num_groups == 0:
        mean, var = torch.batch_norm_update_stats(xc, None, None, 0.0)
        return torch.stack((mean, var)).view(2, 1, C)
    S = x.numel() // (N * C) if N * C else 0
    if x.dim() == 2:  # one value per (sample, channel)
        mean_nc, m2_nc = xc, torch.zeros_like(xc)
    else:
        var_nc, mean_nc = torch.var_mean(xc, dim=tuple(range(2, x.dim())), correction=0)
        m2_nc = var_nc * S
    count = torch.tensor(float(S), dtype=cd, device=x.device)
    shape = (N, num_groups, C // num_groups)
    return torch.stack(combine_moments(mean_nc.view(shape), m2_nc.view(shape), count, (2,)))


def update_running_torch(stats: Tensor, running_mean: Tensor, running_var: Tensor,
                         num_batches_tracked: Optional[Tensor], momentum: float, count: int) -> None:
    """The exponential (or, with ``num_batches_tracked``, cumulative) average with the unbiased variance."""
    mean, var = stats[0, 0], stats[1, 0] * (count / (count - 1))
    if num_batches_tracked is not None:  # momentum=None: weight 1 / num_batches_tracked, on the device
        factor = num_batches_tracked.reciprocal().to(mean.dtype)
        running_mean.mul_(1.0 - factor).add_((mean * factor).to(running_mean.dtype))
        running_var.mul_(1.0 - factor).add_((var * factor).to(running_var.dtype))
    else:
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(var.to(running_var.dtype), alpha=momentum)


def _norm_stats(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                num_batches_tracked: Optional[Tensor], num_groups: int, momentum: float, use_triton: bool) -> Tensor:
    """``(2, R, G)`` mean and biased variance: per channel (``num_groups == 0``: R = 1, G = C) or per
    (sample, group) (R = N, G = num_groups). With ``running_mean``/``running_var`` (BatchNorm), they are
    updated in place with weight ``momentum``, or ``1 / num_batches_tracked`` when that is given."""
    if x.numel() == 0:
        return x.new_full(stats_shape(x, num_groups), math.nan, dtype=compute_dtype(x.dtype))
    if use_triton:
        return kernels.norm_stats_triton(x, num_groups, running_mean, running_var, num_batches_tracked, momentum)
    if (not num_groups and running_mean is not None and num_batches_tracked is None
            and running_mean.dtype == running_var.dtype == compute_dtype(x.dtype)):
        # the native statistics update the running ones themselves, as F.batch_norm's do
        xc = x.detach() if x.dtype == running_mean.dtype else x.detach().to(running_mean.dtype)
        with torch.no_grad():
            mean, var = torch.batch_norm_update_stats(xc, running_mean, running_var, momentum)
        return torch.stack((mean, var)).view(2, 1, x.shape[1])
    stats = norm_stats_torch(x, num_groups)
    if running_mean is not None:
        with torch.no_grad():
            update_running_torch(stats, running_mean, running_var, num_batches_tracked, momentum,
                                 x.numel() // x.shape[1])
    return stats


norm_stats_op = Op("effdrop::norm_stats", _norm_stats,
                   lambda x, running_mean, running_var, num_batches_tracked, num_groups, momentum, use_triton:
                   x.new_empty(stats_shape(x, num_groups), dtype=compute_dtype(x.dtype)),
                   grad_inputs=(), mutates_args=("running_mean", "running_var"))
