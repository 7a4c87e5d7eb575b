"""Statistics pass of the fused norm: partial moments of every (sample, channel, chunk of positions).

Each program reads one chunk of positions of ``BLOCK_C`` channels of one sample and keeps,
per channel, the count, mean and sum of squared deviations of what it has read, merging
block after block with Chan et al.'s rule (no sum-of-squares cancellation). The caller
merges the ``(N, C, K)`` partials per channel (BatchNorm, variance-shift tracking) and per
(sample, group) (GroupNorm) from this one read.
"""

import torch
import triton
import triton.language as tl

from .grid import cdiv, next_power_of_2

# programs to aim for: enough to fill a large GPU when N * C is small (the positions are split into chunks)
_TARGET_PROGRAMS = 1024


@triton.jit
def _partial_moments_kernel(
    x_ptr,  # (N, C, S) strided input
    mean_ptr,  # (N, C, K) fp32 output: mean of each (sample, channel, chunk)
    m2_ptr,  # (N, C, K) fp32 output: sum of squared deviations from that mean
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
    pid = tl.program_id(0).to(tl.int64)
    k = pid % num_chunks
    c_block = (pid // num_chunks) % num_c_blocks
    n = pid // (num_chunks * num_c_blocks)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BC]
    if S_UNIT_STRIDE:
        ss = 1
    if C_UNIT_STRIDE:
        sc = 1
    row = x_ptr + n * sn + c[:, None] * sc  # [BC, 1]
    s_start = k * chunk
    count = 0.0
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    i = 0
    while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
        s = s_start + i * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)  # [BS]
        in_bounds = (c[:, None] < C) & (s[None, :] < S)
        x = tl.load(row + s[None, :] * ss, mask=in_bounds, other=0.0).to(tl.float32)
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
    tl.store(mean_ptr + out, mean, mask=c < C)
    tl.store(m2_ptr + out, m2, mask=c < C)


def stats_blocks(N: int, C: int, S: int, channels_minor: bool):
    """Tile ``(BLOCK_C, BLOCK_S)`` and chunk length for a reduction over the positions of an (N, C, S) view."""
    if channels_minor:  # a thread holds a vector of channels
        block_c = min(64, next_power_of_2(C))
        block_s = max(1, min(next_power_of_2(S), 2048 // block_c))
    else:
        block_s = min(1024, next_power_of_2(S))
        block_c = max(1, min(next_power_of_2(C), 2048 // block_s))
    rows = N * cdiv(C, block_c)
    chunks = max(1, min(cdiv(S, block_s), cdiv(_TARGET_PROGRAMS, rows)))
    chunk = cdiv(cdiv(S, chunks), block_s) * block_s
    return block_c, block_s, chunk


def partial_moments_triton(x: torch.Tensor):
    """Partial moments of an (N, C, *) tensor: ``(mean, m2)`` of shape (N, C, K) and the (K,) counts."""
    from effdrop_triton._layout import as_ncs

    src = as_ncs(x)
    N, C, S = src.shape
    s_unit = S > 1 and src.stride(2) == 1
    c_unit = src.stride(1) == 1 and not s_unit
    block_c, block_s, chunk = stats_blocks(N, C, S, c_unit)
    num_chunks = cdiv(S, chunk)
    num_c_blocks = cdiv(C, block_c)
    mean = torch.empty((N, C, num_chunks), dtype=torch.float32, device=x.device)
    m2 = torch.empty_like(mean)
    grid = (N * num_c_blocks * num_chunks,)
    _partial_moments_kernel[grid](
        src, mean, m2, C, S, src.stride(0), src.stride(1), src.stride(2), num_c_blocks, num_chunks, chunk,
        chunk // block_s, S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4,
    )
    starts = torch.arange(num_chunks, dtype=torch.float32, device=x.device) * chunk
    count = (S - starts).clamp_(max=chunk)
    return mean, m2, count
