"""Statistics of the fused norm: partial moments of every (sample, channel, chunk of positions), then
their merge into the normalization's mean and variance (and BatchNorm's running statistics).

Each program of the first pass reads one chunk of positions of ``BLOCK_C`` channels of one sample
and keeps, per channel, the count, mean and sum of squared deviations of what it has read,
merging block after block with Chan et al.'s rule (no sum-of-squares cancellation). The second
pass merges the ``(N, C, K)`` partials per channel (BatchNorm) or per (sample, group) (GroupNorm)
and updates the running statistics on the device, so no statistic ever passes through the host.
"""

import functools

import torch
import triton
import triton.language as tl

from effdrop_triton._layout import ncs

from .common import address, cdiv, launcher, next_power_of_2, reduction_plan, reduction_rows, unit_strides


@triton.jit
def _partial_moments_kernel(
    x_ptr,  # (N, C, S) strided input
    partials_ptr,  # (2, N, C, K) fp32 output: mean, then sum of squared deviations from it, of each
                   # (sample, channel, chunk)
    N,
    C,
    S,
    sn, sc, ss,
    num_c_blocks,
    num_chunks,
    chunk,  # positions per chunk, a multiple of BLOCK_S
    blocks_per_chunk,  # chunk // BLOCK_S (blocks past S are empty)
    S_UNIT_STRIDE: tl.constexpr,  # ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # sc == 1 (channels_last)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, k = reduction_rows(num_c_blocks, num_chunks, BLOCK_C)  # c: [BC]
    s_start = k * chunk
    count = 0.0
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    i = 0
    while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
        s = s_start + i * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)  # [BS]
        in_bounds = (c[:, None] < C) & (s[None, :] < S)
        x = tl.load(address(x_ptr, n, c[:, None], s[None, :], sn, sc, ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
                    mask=in_bounds, other=0.0).to(tl.float32)
        # the first block of a chunk is never empty, so total > 0; an empty block changes nothing
        block_count = tl.minimum(tl.maximum(S - (s_start + i * BLOCK_S), 0), BLOCK_S).to(tl.float32)
        block_mean = tl.sum(x, axis=1) / tl.maximum(block_count, 1.0)
        deviation = tl.where(in_bounds, x - block_mean[:, None], 0.0)
        block_m2 = tl.sum(deviation * deviation, axis=1)
        # merge the block into the running moments
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
        i += 1
    out = (n * C + c) * num_chunks + k
    tl.store(partials_ptr + out, mean, mask=c < C)
    tl.store(partials_ptr + N * C * num_chunks + out, m2, mask=c < C)


@triton.jit
def _partials(base, j0, o_in_bounds, merged, C, S, num_chunks, chunk, GROUPED: tl.constexpr, BLOCK_M: tl.constexpr):
    """``(offsets, in_bounds, count)`` of partials ``j0 .. j0 + BLOCK_M`` of each output (``base``: its first
    partial's offset): where they lie in the (N, C, K) partials and how many positions each covers."""
    j = j0 + tl.arange(0, BLOCK_M).to(tl.int64)[None, :]  # [1, BM]
    k = j % num_chunks
    if GROUPED:
        offs = base + j  # a group's channels are adjacent: its partials are consecutive
    else:
        offs = base + (j // num_chunks) * C * num_chunks + k
    return offs, o_in_bounds & (j < merged), tl.minimum(S - k * chunk, chunk).to(tl.float32)


@triton.jit
def _finish_moments_kernel(
    partials_ptr,  # (2, N, C, K) fp32: mean and m2 of each (sample, channel, chunk)
    stats_ptr,  # (2, R, G) fp32 output: mean and biased variance (BatchNorm R = 1, G = C; GroupNorm R = N)
    running_mean_ptr,  # (C,) running mean, updated in place (read only with UPDATE_RUNNING)
    running_var_ptr,  # (C,) running variance, updated in place with the unbiased variance
    num_batches_tracked_ptr,  # () int64 count of batches (read only with CUMULATIVE)
    N, C, G, S,
    num_chunks,  # K
    chunk,  # positions per chunk (the last one may be shorter)
    momentum,  # fp32 weight of this batch in the running averages (unless CUMULATIVE)
    unbias,  # fp32 count / (count - 1)
    GROUPED: tl.constexpr,  # GroupNorm: outputs (n, g) merge the channels of a group; BatchNorm: channels merge samples
    UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr,  # momentum=None: the weight is 1 / num_batches_tracked
    BLOCK_O: tl.constexpr,  # outputs per program
    BLOCK_M: tl.constexpr,  # partials merged per step
):
    o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O).to(tl.int64)[:, None]  # [BO, 1]
    if GROUPED:
        outputs = N * G
        per_group = C // G
        merged = per_group * num_chunks  # partials behind one output: (channel of the group, chunk)
        base = ((o // G) * C + (o % G) * per_group) * num_chunks  # first partial of output (n, g)
    else:
        outputs = C
        merged = N * num_chunks  # (sample, chunk)
        base = o * num_chunks
    o_in_bounds = o < outputs
    total = (merged // num_chunks * S).to(tl.float32)
    m2_offset = N * C * num_chunks
    # two passes over the partials (Chan et al.): the mean, then the squared deviations around it
    weighted = tl.zeros([BLOCK_O, BLOCK_M], dtype=tl.float32)
    j0 = 0
    while j0 < merged:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
        offs, in_bounds, count = _partials(base, j0, o_in_bounds, merged, C, S, num_chunks, chunk, GROUPED, BLOCK_M)
        mean = tl.load(partials_ptr + offs, mask=in_bounds, other=0.0)
        weighted += tl.where(in_bounds, mean * count, 0.0)
        j0 += BLOCK_M
    mu = tl.sum(weighted, axis=1) / total  # [BO]
    spread = tl.zeros([BLOCK_O, BLOCK_M], dtype=tl.float32)
    j0 = 0
    while j0 < merged:
        offs, in_bounds, count = _partials(base, j0, o_in_bounds, merged, C, S, num_chunks, chunk, GROUPED, BLOCK_M)
        mean = tl.load(partials_ptr + offs, mask=in_bounds, other=0.0)
        m2 = tl.load(partials_ptr + m2_offset + offs, mask=in_bounds, other=0.0)
        deviation = mean - mu[:, None]
        spread += tl.where(in_bounds, m2 + count * deviation * deviation, 0.0)
        j0 += BLOCK_M
    var = tl.sum(spread, axis=1) / total
    o = tl.reshape(o, [BLOCK_O])
    o_in_bounds = o < outputs
    tl.store(stats_ptr + o, mu, mask=o_in_bounds)
    tl.store(stats_ptr + outputs + o, var, mask=o_in_bounds)
    if UPDATE_RUNNING:  # the exponential (or cumulative) average with the unbiased variance, as F.batch_norm
        if CUMULATIVE:
            momentum = 1.0 / tl.load(num_batches_tracked_ptr).to(tl.float32)
        running_mean = tl.load(running_mean_ptr + o, mask=o_in_bounds, other=0.0)
        running_var = tl.load(running_var_ptr + o, mask=o_in_bounds, other=0.0)
        running_mean = running_mean.to(tl.float32) * (1.0 - momentum) + mu * momentum
        running_var = running_var.to(tl.float32) * (1.0 - momentum) + (var * unbias) * momentum
        tl.store(running_mean_ptr + o, running_mean.to(running_mean_ptr.dtype.element_ty), mask=o_in_bounds)
        tl.store(running_var_ptr + o, running_var.to(running_var_ptr.dtype.element_ty), mask=o_in_bounds)


@functools.lru_cache(maxsize=1024)
def _plan(N: int, C: int, S: int, strides, num_groups: int):
    """The partial-moments and merge launches' grids and arguments for one geometry."""
    layout = unit_strides(S, strides)
    grid, blocks, meta = reduction_plan(N, C, S, layout["C_UNIT_STRIDE"])
    num_chunks, chunk = blocks[1], blocks[2]
    partial = grid, (N, C, S, *strides, *blocks), dict(meta, **layout)
    grouped = num_groups > 0
    G = num_groups if grouped else C
    outputs = N * G if grouped else C
    merged = (C // G if grouped else N) * num_chunks
    block_m = min(128, next_power_of_2(merged))
    block_o = max(1, min(next_power_of_2(outputs), 2048 // block_m, 64))
    count = (C // G if grouped else N) * S
    merge = ((cdiv(outputs, block_o),), (N, C, G, S, num_chunks, chunk),
             count / (count - 1) if count > 1 else float("inf"), dict(BLOCK_O=block_o, BLOCK_M=block_m, num_warps=4))
    return (2, N, C, num_chunks), (2, N if grouped else 1, G), partial, merge


def norm_stats_triton(x: torch.Tensor, num_groups: int, running_mean, running_var, num_batches_tracked,
                      momentum: float) -> torch.Tensor:
    """``(2, R, G)`` fp32 mean and biased variance of an (N, C, *) tensor: per channel (``num_groups == 0``,
    BatchNorm: R = 1, G = C, running statistics updated in place when given) or per (sample, group)
    (GroupNorm: R = N, G = num_groups). Two launches: the partial moments, then their merge."""
    x, (N, C, S), strides = ncs(x)
    partials_shape, stats_shape, (grid, args, meta), (merge_grid, merge_args, unbias, merge_meta) = _plan(
        N, C, S, strides, num_groups)
    partials = torch.empty(partials_shape, dtype=torch.float32, device=x.device)
    launcher(_partial_moments_kernel)[grid](x, partials, *args, **meta)
    stats = torch.empty(stats_shape, dtype=torch.float32, device=x.device)
    update = running_mean is not None
    # the (read-only) partials stand in for absent tensors: never a written one, which a traced graph
    # would clone once per argument
    launcher(_finish_moments_kernel)[merge_grid](
        partials, stats, running_mean if update else partials, running_var if update else partials,
        partials if num_batches_tracked is None else num_batches_tracked, *merge_args, momentum, unbias,
        GROUPED=num_groups > 0, UPDATE_RUNNING=update, CUMULATIVE=num_batches_tracked is not None, **merge_meta,
    )
    return stats
