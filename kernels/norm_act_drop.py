"""Apply pass and backward passes of the fused norm -> affine -> ReLU -> dropout op.

The normalization's statistics come in as one ``(2, R, G)`` tensor: mean and variance per
channel (BatchNorm: R = 1, G = C, batch or running statistics) or per (sample, group) (GroupNorm:
R = N). Every pass turns them, with the affine parameters, into ``scale = weight * invstd`` and
``shift = bias - mean * scale`` for its own channels, and folds dropout's ``1 / (1 - p)`` into them
as the fallback does (``scale' = shift' = 0`` for a dropped channel), so forward and backward see
the same affine output ``z = x * scale' + shift'`` and the same ReLU mask, and no per-channel
table is ever built by PyTorch ops. Dropout masks follow ``effdrop_triton.masks``: drop-channel
gates unit ``n * C + c`` on the channel stream, drop-neuron takes the 16-bit number of the
element's logical row-major index on the neuron stream.

Backward is two passes: the first adds each program's sums of ``dz`` and ``dz * xhat`` into the
weight and bias gradients (and, for GroupNorm, into per-(sample, group) sums) with atomics; the
second forms ``dx = k1 * dz + k2 * xhat + k3`` with the constants made from those sums in place.
"""

import functools

import torch
import triton
import triton.language as tl

from .grid import cdiv, launcher, next_power_of_2

from effdrop_triton._layout import empty_dense, empty_dense_like, is_channels_minor, ncs
from effdrop_triton.masks import keep_scale, neuron_threshold, unit_threshold

from . import norm_stats
from .norm_stats import stats_blocks
from .philox import STREAM_CHANNEL, STREAM_NEURON, philox_words, select_half_word, unit_keep

DROP_NEURON: tl.constexpr = tl.constexpr(1)
DROP_CHANNEL: tl.constexpr = tl.constexpr(2)


@triton.jit
def _affine(stats_ptr, weight_ptr, bias_ptr, n, c, N, C, G, eps, in_bounds, GROUPED: tl.constexpr,
            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``(mean, invstd, scale, shift)`` of (n, c) index tensors from the ``(2, R, G)`` statistics, in fp32
    with correctly rounded square root and division (what the fallback's ``rsqrt`` gives on the CPU)."""
    if GROUPED:
        row = n * G + c // (C // G)
        var_offset = N * G
    else:
        row = c + n * 0
        var_offset = C
    mean = tl.load(stats_ptr + row, mask=in_bounds, other=0.0).to(tl.float32)
    var = tl.load(stats_ptr + var_offset + row, mask=in_bounds, other=1.0).to(tl.float32)
    invstd = tl.math.div_rn(1.0, tl.math.sqrt_rn(var + eps))
    scale = invstd
    if HAS_WEIGHT:
        scale = tl.load(weight_ptr + c, mask=in_bounds, other=0.0).to(tl.float32) * invstd
    if HAS_BIAS:
        shift = tl.load(bias_ptr + c, mask=in_bounds, other=0.0).to(tl.float32) - mean * scale
    else:
        shift = -(mean * scale)
    return mean, invstd, scale, shift


@triton.jit
def _folded_affine(stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, in_bounds, threshold, dscale,
                   DROP: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``(mean, invstd, k1, scale', shift', keep)`` of (n, c) index tensors: ``k1 = weight * invstd`` and the
    affine with dropout's scale folded in; ``keep`` is the channel gate (always true unless drop-channel)."""
    mean, invstd, scale, shift = _affine(stats_ptr, weight_ptr, bias_ptr, n, c, N, C, G, eps, in_bounds, GROUPED,
                                         HAS_WEIGHT, HAS_BIAS)
    k1 = scale
    keep = c >= 0
    if DROP == DROP_CHANNEL:
        keep = unit_keep(tl.load(seed_ptr), n * C + c, STREAM_CHANNEL, threshold)
        scale = tl.where(keep, scale * dscale, 0.0)
        shift = tl.where(keep, shift * dscale, 0.0)
    elif DROP == DROP_NEURON:
        scale = scale * dscale
        shift = shift * dscale
    return mean, invstd, k1, scale, shift, keep


@triton.jit
def _tile(N, C, S, num_s_blocks, num_c_blocks, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Indices ``n [BN, 1, 1], c [1, BC, 1], s [1, 1, BS]`` of this program's tile and its bounds mask."""
    pid = tl.program_id(0).to(tl.int64)
    s_block = pid % num_s_blocks
    c_block = (pid // num_s_blocks) % num_c_blocks
    n_block = pid // (num_s_blocks * num_c_blocks)
    n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64))[:, None, None]
    c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :, None]
    s = (s_block * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64))[None, None, :]
    return n, c, s, (n < N) & (c < C)


@triton.jit
def _norm_act_drop_fwd_kernel(
    x_ptr,  # (N, C, S) strided input
    out_ptr,  # (N, C, S) strided output
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S,
    x_sn, x_sc, x_ss,
    out_sn, out_sc, out_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_s_blocks,
    num_c_blocks,
    threshold,  # keep rule of the dropout level (16-bit neuron or 32-bit unit threshold)
    dscale,  # fp32 1 / (1 - p) (1 without dropout)
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROP: tl.constexpr,  # 0 none or 2 channel (drop-neuron runs in _norm_act_drop_neuron_fwd_kernel)
    S_UNIT_STRIDE: tl.constexpr,  # x_ss == out_ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # x_sc == out_sc == 1 (channels_last)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, s, nc_in_bounds = _tile(N, C, S, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
    in_bounds = nc_in_bounds & (s < S)
    _, _, _, scale, shift, keep = _folded_affine(
        stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
        threshold, dscale, DROP, GROUPED, HAS_WEIGHT, HAS_BIAS)
    if S_UNIT_STRIDE:
        x_ss = 1
        out_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        out_sc = 1
    if S_UNIT_STRIDE:  # rows of a dropped channel are never read (scale' = shift' = 0 gives +0)
        x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds & keep, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
    z = x * scale + shift
    if ACT:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + n * out_sn + c * out_sc + s * out_ss, z.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT: tl.constexpr):
    """Gradient at the affine output: the incoming gradient through dropout (``keep``: the channel gate or
    the neuron mask) and ReLU (masks recomputed)."""
    dz = tl.where(keep, dy * dscale, 0.0)
    if ACT:
        dz = tl.where(x * scale + shift > 0.0, dz, 0.0)
    return dz


@triton.jit
def _add_sums(sums_ptr, weight_ptr, n, c, N, C, G, sum_dz, sum_dz_xhat, in_bounds, GROUPED: tl.constexpr,
              HAS_WEIGHT: tl.constexpr):
    """Add a program's per-(n, c) sums into the weight and bias gradients and, for GroupNorm, into the
    per-(sample, group) sums of ``weight * dz`` and ``weight * dz * xhat``."""
    c = c + n * 0  # one address per value
    tl.atomic_add(sums_ptr + c, sum_dz_xhat, mask=in_bounds)  # dweight
    tl.atomic_add(sums_ptr + C + c, sum_dz, mask=in_bounds)  # dbias
    if GROUPED:
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + c, mask=in_bounds, other=0.0).to(tl.float32)
            sum_dz = w * sum_dz
            sum_dz_xhat = w * sum_dz_xhat
        group = 2 * C + n * G + c // (C // G)
        tl.atomic_add(sums_ptr + group, sum_dz_xhat, mask=in_bounds)
        tl.atomic_add(sums_ptr + N * G + group, sum_dz, mask=in_bounds)


@triton.jit
def _dx_coefficients(sums_ptr, n, c, N, C, G, S, k1, invstd, in_bounds, GROUPED: tl.constexpr):
    """``(k2, k3)`` of ``dx = k1 * dz + k2 * xhat + k3`` when the statistics depend on x: minus the means of
    ``weight * dz * xhat`` and ``weight * dz`` over what each statistic covers, times ``invstd``."""
    if GROUPED:
        group = 2 * C + n * G + c // (C // G)
        count = (C // G) * 1.0 * S
        mean_dz_xhat = tl.load(sums_ptr + group, mask=in_bounds, other=0.0) / count
        mean_dz = tl.load(sums_ptr + N * G + group, mask=in_bounds, other=0.0) / count
        return -invstd * mean_dz_xhat, -invstd * mean_dz
    count = N * 1.0 * S
    dweight = tl.load(sums_ptr + c + n * 0, mask=in_bounds, other=0.0)
    dbias = tl.load(sums_ptr + C + c + n * 0, mask=in_bounds, other=0.0)
    return -k1 * (dweight / count), -k1 * (dbias / count)


@triton.jit
def _norm_act_drop_bwd_sums_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    sums_ptr,  # fp32 sums, zeroed, added to: (2, C) dweight and dbias, then (2, N, G) per group (GROUPED)
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_c_blocks,
    num_chunks,
    chunk,  # positions per chunk, a multiple of BLOCK_S
    blocks_per_chunk,  # chunk // BLOCK_S (blocks past S are masked out)
    threshold,
    dscale,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROP: tl.constexpr,  # 0 none or 2 channel (drop-neuron runs in _norm_act_drop_neuron_bwd_sums_kernel)
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid % num_chunks
    c_block = (pid // num_chunks) % num_c_blocks
    n = pid // (num_chunks * num_c_blocks)
    channels = c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BC]
    c = channels[:, None]  # [BC, 1]
    c_in_bounds = c < C
    mean, invstd, _, scale, shift, keep = _folded_affine(
        stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, c_in_bounds,
        threshold, dscale, DROP, GROUPED, HAS_WEIGHT, HAS_BIAS)
    if S_UNIT_STRIDE:
        x_ss = 1
        dy_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        dy_sc = 1
    s_start = k * chunk
    acc_dz = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    i = 0
    while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
        s = s_start + i * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)[None, :]  # [1, BS]
        in_bounds = c_in_bounds & (s < S)
        x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=in_bounds, other=0.0).to(tl.float32)
        dz = _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT)
        dz = tl.where(in_bounds, dz, 0.0)
        acc_dz += dz
        acc_dz_xhat += dz * ((x - mean) * invstd)
        i += 1
    _add_sums(sums_ptr, weight_ptr, n, channels, N, C, G, tl.sum(acc_dz, axis=1), tl.sum(acc_dz_xhat, axis=1),
              channels < C, GROUPED, HAS_WEIGHT)


@triton.jit
def _norm_act_drop_bwd_dx_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    dx_ptr,  # (N, C, S) strided output: gradient of the input
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    sums_ptr,  # fp32 sums of the sums pass: (2, C) dweight, dbias, then (2, N, G) per-group (read when COUPLED)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    dx_sn, dx_sc, dx_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_s_blocks,
    num_c_blocks,
    threshold,
    dscale,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DROP: tl.constexpr,  # 0 none or 2 channel (drop-neuron runs in _norm_act_drop_neuron_bwd_dx_kernel)
    COUPLED: tl.constexpr,  # the statistics depend on x (batch statistics, GroupNorm): dx = k1 dz + k2 xhat + k3
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, s, nc_in_bounds = _tile(N, C, S, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
    in_bounds = nc_in_bounds & (s < S)
    mean, invstd, k1, scale, shift, keep = _folded_affine(
        stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
        threshold, dscale, DROP, GROUPED, HAS_WEIGHT, HAS_BIAS)
    if S_UNIT_STRIDE:
        x_ss = 1
        dy_ss = 1
        dx_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        dy_sc = 1
        dx_sc = 1
    x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=in_bounds, other=0.0).to(tl.float32)
    dz = _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT)
    dx = k1 * dz
    if COUPLED:
        k2, k3 = _dx_coefficients(sums_ptr, n, c, N, C, G, S, k1, invstd, nc_in_bounds, GROUPED)
        dx = dx + k2 * ((x - mean) * invstd) + k3
    tl.store(dx_ptr + n * dx_sn + c * dx_sc + s * dx_ss, dx.to(dx_ptr.dtype.element_ty), mask=in_bounds)


# Tilings of the drop-neuron passes. 8 logical neighbours share a Philox call (``effdrop_triton.masks``), so
# a program holds groups of 8 and each thread makes its groups' calls once, as ``drop_neuron``'s kernels do.
ROW_GROUPS: tl.constexpr = tl.constexpr(0)  # S > 1 (NCHW, strided): 8 positions of an (n, c) row, vectors along s
CHANNEL_VECTORS: tl.constexpr = tl.constexpr(1)  # S > 1, channels_last: 8 positions per channel, vectors along c
CHANNEL_GROUPS: tl.constexpr = tl.constexpr(2)  # S == 1: 8 channels of a sample, vectors along c


@triton.jit
def _neuron_tile(C, S, num_g_blocks, num_c_blocks, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """This program's groups: ``n``, ``c`` (a CHANNEL_GROUPS group's first channel), the group index ``g``
    along the grouped axis and ``first``, the logical index of the group's first element."""
    pid = tl.program_id(0).to(tl.int64)
    g_block = pid % num_g_blocks
    c_block = (pid // num_g_blocks) % num_c_blocks
    n_block = pid // (num_g_blocks * num_c_blocks)
    return _neuron_tile_at(n_block, c_block, g_block, C, S, TILE, BLOCK_N, BLOCK_C, BLOCK_G)


@triton.jit
def _neuron_tile_at(n_block, c_block, g_block, C, S, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """``_neuron_tile`` of the tile at block indices ``(n_block, c_block, g_block)``."""
    if TILE == ROW_GROUPS:
        t = tl.arange(0, BLOCK_N * BLOCK_C * BLOCK_G)[:, None]  # [T, 1]: one group per row
        n = n_block * BLOCK_N + t // (BLOCK_C * BLOCK_G)
        c = c_block * BLOCK_C + (t // BLOCK_G) % BLOCK_C
    else:
        t = tl.arange(0, BLOCK_N * BLOCK_G)[:, None]  # [T, 1]
        n = n_block * BLOCK_N + t // BLOCK_G
        c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :]  # [1, BC]; BC = 1 for CHANNEL_GROUPS
    g = g_block * BLOCK_G + t % BLOCK_G
    if TILE == CHANNEL_GROUPS:
        c = g * 8
        first = n * C + c
    else:
        first = (n * C + c) * S + g * 8  # [T, 1] or [T, BC]
    return n, c, g, first


@triton.jit
def _neuron_piece(c, g, piece: tl.constexpr, TILE: tl.constexpr, LANES: tl.constexpr):
    """``(c, s, j)`` of one piece of the groups: its elements' channel and position, and their place ``j``
    (0..7) in the group. A piece is LANES neighbours (one 16-byte vector) or, for CHANNEL_VECTORS, one."""
    j = piece * LANES + tl.arange(0, LANES)[None, :]  # [1, LANES]
    if TILE == CHANNEL_GROUPS:
        c = c + j
        s = 0
    else:
        s = g * 8 + j
    return c, s, j


@triton.jit
def _neuron_words(seed_ptr, first, ALIGNED: tl.constexpr):
    """Words of the Philox call holding each group's first element and, unless ALIGNED (groups start at a
    multiple of 8), of the next call, which the group's end may fall in."""
    seed = tl.load(seed_ptr)
    a0, a1, a2, a3 = philox_words(seed, first >> 3, STREAM_NEURON)
    if ALIGNED:
        b0, b1, b2, b3 = a0, a1, a2, a3
    else:
        b0, b1, b2, b3 = philox_words(seed, (first >> 3) + 1, STREAM_NEURON)
    return a0, a1, a2, a3, b0, b1, b2, b3


@triton.jit
def _group_keep(a0, a1, a2, a3, b0, b1, b2, b3, first, j, threshold, ALIGNED: tl.constexpr):
    """Drop-neuron keep decision of element ``first + j`` from its group's call words."""
    if ALIGNED:
        u16 = select_half_word(a0, a1, a2, a3, j)
    else:
        k = (first & 7).to(tl.int32) + j  # place in the first call; 8.. fall in the next
        second = k >= 8
        u16 = select_half_word(tl.where(second, b0, a0), tl.where(second, b1, a1), tl.where(second, b2, a2),
                               tl.where(second, b3, a3), k & 7)
    return u16 < threshold


@triton.jit
def _norm_act_drop_neuron_fwd_kernel(
    x_ptr,  # (N, C, S) strided input
    out_ptr,  # (N, C, S) strided output
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    seed_ptr,  # () int64 seed
    N, C, S,
    x_sn, x_sc, x_ss,
    out_sn, out_sc, out_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_g_blocks,
    num_c_blocks,
    threshold,  # keep when the 16-bit number is below this
    dscale,  # fp32 1 / (1 - p)
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    TILE: tl.constexpr,  # ROW_GROUPS, CHANNEL_VECTORS or CHANNEL_GROUPS
    ALIGNED: tl.constexpr,  # groups start at multiples of 8 (S % 8 == 0, or C % 8 == 0 when S == 1)
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,  # groups of 8 along the grouped axis
    LANES: tl.constexpr,  # neighbours per piece (1 for CHANNEL_VECTORS)
):
    n, c_group, g, first = _neuron_tile(C, S, num_g_blocks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
    a0, a1, a2, a3, b0, b1, b2, b3 = _neuron_words(seed_ptr, first, ALIGNED)
    if S_UNIT_STRIDE:
        x_ss = 1
        out_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        out_sc = 1
    if TILE != CHANNEL_GROUPS:  # a group's elements share a channel: its constants load once
        _, _, _, scale, shift, _ = _folded_affine(
            stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c_group, N, C, G, eps, (n < N) & (c_group < C),
            threshold, dscale, DROP_NEURON, GROUPED, HAS_WEIGHT, HAS_BIAS)
    # a thread holds its groups' pieces, so each Philox call runs once (in one thread)
    for piece in tl.static_range(8 // LANES):
        c, s, j = _neuron_piece(c_group, g, piece, TILE, LANES)
        nc_in_bounds = (n < N) & (c < C)
        in_bounds = nc_in_bounds & (s < S)
        if TILE == CHANNEL_GROUPS:
            _, _, _, scale, shift, _ = _folded_affine(
                stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
                threshold, dscale, DROP_NEURON, GROUPED, HAS_WEIGHT, HAS_BIAS)
        x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
        z = x * scale + shift
        if ACT:
            z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
        z = tl.where(_group_keep(a0, a1, a2, a3, b0, b1, b2, b3, first, j, threshold, ALIGNED), z, 0.0)
        tl.store(out_ptr + n * out_sn + c * out_sc + s * out_ss, z.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _dx_constants(stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c, N, C, G, S, eps, nc_in_bounds, threshold,
                  dscale, COUPLED: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """``(scale', shift', k1, mean, invstd, k2, k3)`` of the drop-neuron input gradient (k2, k3 only when
    COUPLED)."""
    mean, invstd, k1, scale, shift, always_kept = _folded_affine(
        stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
        threshold, dscale, DROP_NEURON, GROUPED, HAS_WEIGHT, HAS_BIAS)
    k2 = k1
    k3 = k1
    if COUPLED:
        k2, k3 = _dx_coefficients(sums_ptr, n, c, N, C, G, S, k1, invstd, nc_in_bounds, GROUPED)
    return scale, shift, k1, mean, invstd, k2, k3


@triton.jit
def _norm_act_drop_neuron_bwd_dx_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    dx_ptr,  # (N, C, S) strided output: gradient of the input
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    sums_ptr,  # fp32 sums of the sums pass: (2, C) dweight, dbias, then (2, N, G) per-group (read when COUPLED)
    seed_ptr,  # () int64 seed
    N, C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    dx_sn, dx_sc, dx_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_g_blocks,
    num_c_blocks,
    threshold,
    dscale,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COUPLED: tl.constexpr,  # the statistics depend on x (batch statistics, GroupNorm): dx = k1 dz + k2 xhat + k3
    TILE: tl.constexpr,
    ALIGNED: tl.constexpr,
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    LANES: tl.constexpr,
):
    n, c_group, g, first = _neuron_tile(C, S, num_g_blocks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
    a0, a1, a2, a3, b0, b1, b2, b3 = _neuron_words(seed_ptr, first, ALIGNED)
    if S_UNIT_STRIDE:
        x_ss = 1
        dy_ss = 1
        dx_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        dy_sc = 1
        dx_sc = 1
    if TILE != CHANNEL_GROUPS:
        scale, shift, k1, mean, invstd, k2, k3 = _dx_constants(
            stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c_group, N, C, G, S, eps, (n < N) & (c_group < C),
            threshold, dscale, COUPLED, GROUPED, HAS_WEIGHT, HAS_BIAS)
    for piece in tl.static_range(8 // LANES):
        c, s, j = _neuron_piece(c_group, g, piece, TILE, LANES)
        nc_in_bounds = (n < N) & (c < C)
        in_bounds = nc_in_bounds & (s < S)
        if TILE == CHANNEL_GROUPS:
            scale, shift, k1, mean, invstd, k2, k3 = _dx_constants(
                stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c, N, C, G, S, eps, nc_in_bounds, threshold,
                dscale, COUPLED, GROUPED, HAS_WEIGHT, HAS_BIAS)
        x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=in_bounds, other=0.0).to(tl.float32)
        keep = _group_keep(a0, a1, a2, a3, b0, b1, b2, b3, first, j, threshold, ALIGNED)
        dx = k1 * _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT)
        if COUPLED:
            dx = dx + k2 * ((x - mean) * invstd) + k3
        tl.store(dx_ptr + n * dx_sn + c * dx_sc + s * dx_ss, dx.to(dx_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _norm_act_drop_neuron_bwd_sums_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    sums_ptr,  # fp32 sums, zeroed, added to: (2, C) dweight and dbias, then (2, N, G) per group (GROUPED)
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    seed_ptr,  # () int64 seed
    N, C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    G,  # statistics per sample (GroupNorm's groups) or C
    eps,
    num_c_blocks,
    num_chunks,  # programs along the grouped axis (K, except for CHANNEL_GROUPS, whose K is 1)
    blocks_per_chunk,  # BLOCK_G blocks of groups per program (1 for CHANNEL_GROUPS; blocks past the end are masked)
    threshold,  # keep when the 16-bit number is below this
    dscale,  # fp32 1 / (1 - p)
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,  # GroupNorm statistics
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    TILE: tl.constexpr,  # ROW_GROUPS, CHANNEL_VECTORS or CHANNEL_GROUPS (tiles of _neuron_tile)
    ALIGNED: tl.constexpr,
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    LANES: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid % num_chunks
    c_block = (pid // num_chunks) % num_c_blocks
    n_block = pid // (num_chunks * num_c_blocks)
    if S_UNIT_STRIDE:
        x_ss = 1
        dy_ss = 1
    if C_UNIT_STRIDE:
        x_sc = 1
        dy_sc = 1
    if TILE == CHANNEL_GROUPS:  # S == 1: every element is its own (sample, channel), so nothing to reduce
        n, c_group, g, first = _neuron_tile_at(n_block, c_block, k, C, S, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
        a0, a1, a2, a3, b0, b1, b2, b3 = _neuron_words(seed_ptr, first, ALIGNED)
        for piece in tl.static_range(8 // LANES):
            c, s, j = _neuron_piece(c_group, g, piece, TILE, LANES)
            in_bounds = (n < N) & (c < C)
            mean, invstd, _, scale, shift, _ = _folded_affine(
                stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, in_bounds,
                threshold, dscale, DROP_NEURON, GROUPED, HAS_WEIGHT, HAS_BIAS)
            x = tl.load(x_ptr + n * x_sn + c * x_sc, mask=in_bounds, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc, mask=in_bounds, other=0.0).to(tl.float32)
            keep = _group_keep(a0, a1, a2, a3, b0, b1, b2, b3, first, j, threshold, ALIGNED)
            dz = tl.where(in_bounds, _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT), 0.0)
            _add_sums(sums_ptr, weight_ptr, n, c, N, C, G, dz, dz * ((x - mean) * invstd), in_bounds, GROUPED,
                      HAS_WEIGHT)
    else:
        # a group's elements share a (sample, channel): its constants load once per program
        n, c, g, first = _neuron_tile_at(n_block, c_block, k * blocks_per_chunk, C, S, TILE, BLOCK_N, BLOCK_C,
                                         BLOCK_G)
        nc_in_bounds = (n < N) & (c < C)
        # (named throwaways below: a `_` reassigned in the loop would be a loop-carried value changing type)
        mean, invstd, k1, scale, shift, always_kept = _folded_affine(
            stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
            threshold, dscale, DROP_NEURON, GROUPED, HAS_WEIGHT, HAS_BIAS)
        if TILE == CHANNEL_VECTORS:  # [groups, channels]
            acc_dz = tl.zeros([BLOCK_N * BLOCK_G, BLOCK_C], dtype=tl.float32)
        else:  # [groups, lanes]
            acc_dz = tl.zeros([BLOCK_N * BLOCK_C * BLOCK_G, LANES], dtype=tl.float32)
        acc_dz_xhat = tl.zeros_like(acc_dz)
        i = 0
        while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
            n_again, c_again, g, first = _neuron_tile_at(n_block, c_block, k * blocks_per_chunk + i, C, S, TILE,
                                                       BLOCK_N, BLOCK_C, BLOCK_G)
            a0, a1, a2, a3, b0, b1, b2, b3 = _neuron_words(seed_ptr, first, ALIGNED)
            # a thread holds its groups' pieces, so each Philox call runs once (in one thread)
            for piece in tl.static_range(8 // LANES):
                c_again, s, j = _neuron_piece(c, g, piece, TILE, LANES)
                in_bounds = nc_in_bounds & (s < S)
                x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=in_bounds, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=in_bounds, other=0.0).to(tl.float32)
                keep = _group_keep(a0, a1, a2, a3, b0, b1, b2, b3, first, j, threshold, ALIGNED)
                dz = tl.where(in_bounds, _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT), 0.0)
                acc_dz += dz
                acc_dz_xhat += dz * ((x - mean) * invstd)
            i += 1
        # rows of the accumulators are groups (n, c, g) for ROW_GROUPS, (n, g) for CHANNEL_VECTORS: sum the g
        if TILE == ROW_GROUPS:
            sum_dz = tl.sum(tl.reshape(tl.sum(acc_dz, axis=1), [BLOCK_N * BLOCK_C, BLOCK_G]), axis=1)
            sum_dz_xhat = tl.sum(tl.reshape(tl.sum(acc_dz_xhat, axis=1), [BLOCK_N * BLOCK_C, BLOCK_G]), axis=1)
            rows = tl.arange(0, BLOCK_N * BLOCK_C)
            n_out = n_block * BLOCK_N + rows // BLOCK_C  # [BN * BC]
            c_out = c_block * BLOCK_C + rows % BLOCK_C
        else:
            sum_dz = tl.sum(tl.reshape(acc_dz, [BLOCK_N, BLOCK_G, BLOCK_C]), axis=1)
            sum_dz_xhat = tl.sum(tl.reshape(acc_dz_xhat, [BLOCK_N, BLOCK_G, BLOCK_C]), axis=1)
            n_out = n_block * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]  # [BN, 1]
            c_out = c_block * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]  # [1, BC]
        _add_sums(sums_ptr, weight_ptr, n_out, c_out, N, C, G, sum_dz, sum_dz_xhat, (n_out < N) & (c_out < C),
                  GROUPED, HAS_WEIGHT)


def _unit_strides(S: int, *strides):
    """``(S_UNIT_STRIDE, C_UNIT_STRIDE)`` when every (N, C, S) view shares the layout kind."""
    s_unit = S > 1 and all(st[2] == 1 for st in strides)
    c_unit = all(st[1] == 1 for st in strides) and not s_unit
    return s_unit, c_unit


def _elementwise_blocks(N: int, C: int, S: int, c_unit: bool):
    """(N, C, S) tile of the elementwise passes (as the unit-gate kernel's)."""
    if c_unit:
        block_c = min(64, next_power_of_2(C))
        block_s = max(1, min(next_power_of_2(S), 8192 // block_c))
    else:
        block_s = min(1024, next_power_of_2(S))
        block_c = max(1, min(next_power_of_2(C), 2048 // block_s))
    block_n = max(1, min(next_power_of_2(N), (8192 if c_unit else 2048) // (block_c * block_s)))
    return block_n, block_c, block_s


def _neuron_blocks(N: int, C: int, S: int, c_unit: bool, element_size: int):
    """``(grid, num_g_blocks, num_c_blocks, constexprs)`` of the drop-neuron passes (as ``drop_neuron``'s)."""
    lanes = min(8, 16 // element_size)  # one 16-byte vector
    if S == 1:  # (N, C) input: the 8 neighbours are channels
        tile, grouped = CHANNEL_GROUPS, C
        block_g = min(next_power_of_2(cdiv(C, 8)), 256)
        block_c = 1
        block_n = max(1, min(next_power_of_2(N), 256 // block_g))
        vectors = block_n * block_g
    elif c_unit:
        tile, grouped, lanes = CHANNEL_VECTORS, S, 1
        block_c = min(64, next_power_of_2(C))
        block_g = min(next_power_of_2(cdiv(S, 8)), max(1, 1024 // block_c))
        block_n = max(1, min(next_power_of_2(N), 1024 // (block_c * block_g)))
        vectors = block_n * block_g * block_c * element_size // 16
    else:
        tile, grouped = ROW_GROUPS, S
        block_g = min(next_power_of_2(cdiv(S, 8)), 256)
        block_c = max(1, min(next_power_of_2(C), 256 // block_g))
        block_n = max(1, min(next_power_of_2(N), 256 // (block_c * block_g)))
        vectors = block_n * block_c * block_g
    if grouped % 8:  # groups straddle calls and rows cannot be 16-byte aligned: one element per piece
        lanes = 1  # (wider pieces make Triton 3.6 recompute the words per element)
    num_g_blocks = cdiv(cdiv(grouped, 8), block_g)
    num_c_blocks = 1 if tile == CHANNEL_GROUPS else cdiv(C, block_c)
    grid = (cdiv(N, block_n) * num_c_blocks * num_g_blocks,)
    # as many threads as 16-byte vectors in one piece: none computes another's Philox call
    constexprs = dict(TILE=tile, ALIGNED=grouped % 8 == 0, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_G=block_g,
                      LANES=lanes, num_warps=max(1, min(4, vectors // 32)))
    return grid, num_g_blocks, num_c_blocks, constexprs


def _drop_args(seed, p: float, drop: int, fallback_ptr: torch.Tensor):
    """``(seed pointer, threshold, dscale)``: a dummy pointer and no-op values without dropout."""
    if drop == 0:
        return fallback_ptr, 0, 1.0
    threshold = neuron_threshold(p) if drop == 1 else unit_threshold(p)
    return seed, threshold, keep_scale(p)


def _norm_args(weight, bias, stats: torch.Tensor, num_groups: int, C: int):
    """``(weight pointer, bias pointer, G, constexprs)``: the statistics stand in for absent parameters."""
    norm = dict(GROUPED=num_groups > 0, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)
    return (stats if weight is None else weight), (stats if bias is None else bias), num_groups or C, norm


@functools.lru_cache(maxsize=1024)
def _fwd_plan(N: int, C: int, S: int, x_strides, out_strides, neuron: bool, element_size: int):
    """``(grid, runtime arguments after the pointers, constexprs)`` of the apply pass."""
    s_unit, c_unit = _unit_strides(S, x_strides, out_strides)
    strides = (*x_strides, *out_strides)
    if neuron:
        grid, num_g_blocks, num_c_blocks, meta = _neuron_blocks(N, C, S, c_unit, element_size)
        return grid, (N, C, S, *strides), (num_g_blocks, num_c_blocks), dict(
            S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit, **meta)
    block_n, block_c, block_s = _elementwise_blocks(N, C, S, c_unit)
    num_s_blocks, num_c_blocks = cdiv(S, block_s), cdiv(C, block_c)
    grid = (cdiv(N, block_n) * num_c_blocks * num_s_blocks,)
    return grid, (N, C, S, *strides), (num_s_blocks, num_c_blocks), dict(
        S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4)


def norm_act_drop_fwd_triton(x: torch.Tensor, weight, bias, stats: torch.Tensor, seed, num_groups: int, eps: float,
                             p: float, act: bool, drop: int) -> torch.Tensor:
    """``drop(relu(x * scale + shift))`` with the affine made from ``stats`` (2, R, G); the output keeps
    x's layout (channels_last stays channels_last). One launch."""
    out = empty_dense_like(x)
    x, (N, C, S), x_strides = ncs(x)
    _, _, out_strides = ncs(out)
    grid, head, tail, meta = _fwd_plan(N, C, S, x_strides, out_strides, drop == 1, x.element_size())
    weight, bias, G, norm = _norm_args(weight, bias, stats, num_groups, C)
    seed_ptr, threshold, dscale = _drop_args(seed, p, drop, stats)
    if drop == 1:
        kernel = _norm_act_drop_neuron_fwd_kernel
    else:
        kernel, meta = _norm_act_drop_fwd_kernel, dict(meta, DROP=drop)
    launcher(kernel)[grid](x, out, stats, weight, bias, seed_ptr, *head, G, eps, *tail, threshold, dscale, ACT=act,
                           **norm, **meta)
    return out


def _grad_view(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The incoming gradient in x's layout kind (one copy only when they differ)."""
    if grad.stride() == x.stride():
        return grad
    out = empty_dense(grad.shape, is_channels_minor(x), grad.dtype, grad.device)
    out.copy_(grad)
    return out


@functools.lru_cache(maxsize=1024)
def _bwd_plan(N: int, C: int, S: int, x_strides, dy_strides, dx_strides, neuron: bool, element_size: int):
    """The sums pass's and the input-gradient pass's ``(grid, arguments, arguments, constexprs)``."""
    s_unit, c_unit = _unit_strides(S, x_strides, dy_strides, dx_strides)
    layout = dict(S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit)
    strides = (*x_strides, *dy_strides)
    if neuron:
        grid, num_g_blocks, num_c_blocks, meta = _neuron_blocks(N, C, S, c_unit, element_size)
        # the sums walk the same tiles, a chunk of group blocks per program
        rows = cdiv(N, meta["BLOCK_N"]) * num_c_blocks
        if meta["TILE"] == CHANNEL_GROUPS:  # S == 1: a program's sums are its elements
            num_chunks, blocks_per_chunk = num_g_blocks, 1
        else:
            chunks = max(1, min(num_g_blocks, cdiv(norm_stats._TARGET_PROGRAMS, rows)))
            blocks_per_chunk = cdiv(num_g_blocks, chunks)
            num_chunks = cdiv(num_g_blocks, blocks_per_chunk)
        sums = ((rows * num_chunks,), (N, C, S, *strides),
                (num_c_blocks, num_chunks, blocks_per_chunk), dict(layout, **meta))
        dx = (grid, (N, C, S, *strides, *dx_strides),
              (num_g_blocks, num_c_blocks), dict(layout, **meta))
        return sums, dx
    block_c, block_s, chunk = stats_blocks(N, C, S, c_unit)
    num_chunks, num_c_blocks = cdiv(S, chunk), cdiv(C, block_c)
    sums = ((N * num_c_blocks * num_chunks,), (N, C, S, *strides),
            (num_c_blocks, num_chunks, chunk, chunk // block_s), dict(layout, BLOCK_C=block_c, BLOCK_S=block_s,
                                                                        num_warps=4))
    block_n, block_c, block_s = _elementwise_blocks(N, C, S, c_unit)
    num_s_blocks, num_c_blocks = cdiv(S, block_s), cdiv(C, block_c)
    dx = ((cdiv(N, block_n) * num_c_blocks * num_s_blocks,),
          (N, C, S, *strides, *dx_strides), (num_s_blocks, num_c_blocks),
          dict(layout, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4))
    return sums, dx


def norm_act_drop_bwd_triton(grad: torch.Tensor, x: torch.Tensor, weight, bias, stats: torch.Tensor, seed,
                             num_groups: int, eps: float, p: float, act: bool, drop: int, coupled: bool):
    """``(dx, dparams)``: the input gradient and the (2, C) fp32 weight and bias gradients. Two launches: the
    sums pass adds into one zeroed buffer, the input-gradient pass reads the constants it needs from it.
    ``coupled``: the statistics depend on x (batch statistics or GroupNorm)."""
    dx = empty_dense_like(x)
    dy, _, dy_strides = ncs(_grad_view(grad, x))
    x, (N, C, S), x_strides = ncs(x)
    _, _, dx_strides = ncs(dx)
    sums_pass, dx_pass = _bwd_plan(N, C, S, x_strides, dy_strides, dx_strides, drop == 1, x.element_size())
    weight, bias, G, norm = _norm_args(weight, bias, stats, num_groups, C)
    sums = torch.zeros(2 * C + (2 * N * G if num_groups else 0), dtype=torch.float32, device=x.device)
    seed_ptr, threshold, dscale = _drop_args(seed, p, drop, stats)
    if drop == 1:
        sums_kernel, dx_kernel, drop_meta = _norm_act_drop_neuron_bwd_sums_kernel, _norm_act_drop_neuron_bwd_dx_kernel, {}
    else:
        sums_kernel, dx_kernel, drop_meta = _norm_act_drop_bwd_sums_kernel, _norm_act_drop_bwd_dx_kernel, dict(DROP=drop)
    grid, head, tail, meta = sums_pass
    launcher(sums_kernel)[grid](x, dy, sums, stats, weight, bias, seed_ptr, *head, G, eps, *tail, threshold, dscale,
                                ACT=act, **norm, **drop_meta, **meta)
    grid, head, tail, meta = dx_pass
    launcher(dx_kernel)[grid](x, dy, dx, stats, weight, bias, sums, seed_ptr, *head, G, eps, *tail, threshold, dscale,
                              ACT=act, COUPLED=coupled, **norm, **drop_meta, **meta)
    return dx, sums[:2 * C].view(2, C)
