"""Apply pass and backward passes of the fused norm -> affine -> ReLU -> dropout op.

The normalization's statistics come in as one ``(2, R, G)`` tensor: mean and variance per
channel (BatchNorm: R = 1, G = C, batch or running statistics) or per (sample, group) (GroupNorm:
R = N). Every pass turns them, with the affine parameters, into ``scale = weight * invstd`` and
``shift = bias - mean * scale`` for its own channels, and folds dropout's ``1 / (1 - p)`` into them
as the fallback does (``scale' = shift' = 0`` for a dropped channel), so forward and backward see
the same affine output ``z = x * scale' + shift'`` and the same ReLU mask, and no per-channel
table is ever built by PyTorch ops. The dropout level is ``None`` (no dropout), ``DropLevel.NEURON``
or ``DropLevel.CHANNEL``, and the kernels' ``LEVEL`` constexpr is that level's number (``None`` without
dropout). Masks follow ``effdrop_triton.masks``: drop-channel gates unit ``n * C + c`` on the channel
stream, drop-neuron takes the 16-bit number of the element's logical row-major index on the neuron
stream (the passes then tile groups of 8 neighbours, which share a Philox call).

Backward is two passes: the first adds each program's sums of ``dz`` and ``dz * xhat`` into the
weight and bias gradients (and, for GroupNorm, into per-(sample, group) sums) with atomics; the
second forms ``dx = k1 * dz + k2 * xhat + k3`` with the constants made from those sums in place.
"""

import functools

import torch
import triton
import triton.language as tl

from effdrop_triton._layout import empty_dense, empty_dense_like, is_channels_minor, ncs
from effdrop_triton.levels import DropLevel
from effdrop_triton.masks import keep_scale, neuron_threshold, unit_threshold

from .common import (CHANNEL, CHANNEL_GROUPS, CHANNEL_VECTORS, NEURON, ROW_GROUPS, address, cdiv, chunks, group_keep,
                     group_words, launcher, neuron_piece, neuron_plan, neuron_tile, program_neuron_tile,
                     reduction_plan, reduction_rows, split_pid, tile, tile_plan, unit_keep, unit_strides)


@triton.jit
def _affine(stats_ptr, weight_ptr, bias_ptr, n, c, N, C, G, eps, in_bounds, GROUPED: tl.constexpr,
            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``(mean, invstd, scale, shift)`` of (n, c) index tensors from the ``(2, R, G)`` statistics, in fp32
    with correctly rounded square root and division (the fallback's ``1 / sqrt``)."""
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
                   LEVEL: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``(mean, invstd, k1, scale', shift', keep)`` of (n, c) index tensors: ``k1 = weight * invstd`` and the
    affine with dropout's scale folded in; ``keep`` is the channel gate (always true unless drop-channel)."""
    mean, invstd, scale, shift = _affine(stats_ptr, weight_ptr, bias_ptr, n, c, N, C, G, eps, in_bounds, GROUPED,
                                         HAS_WEIGHT, HAS_BIAS)
    k1 = scale
    keep = c >= 0
    if LEVEL == CHANNEL:
        keep = unit_keep(tl.load(seed_ptr), n * C + c, CHANNEL, threshold)
        scale = tl.where(keep, scale * dscale, 0.0)
        shift = tl.where(keep, shift * dscale, 0.0)
    elif LEVEL == NEURON:
        scale = scale * dscale
        shift = shift * dscale
    return mean, invstd, k1, scale, shift, keep


@triton.jit
def _act(z, ACT: tl.constexpr):
    """ReLU when ACT (a NaN stays NaN, as in PyTorch)."""
    if ACT:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return z


# Every pass is one kernel whose LEVEL constexpr is the level: with drop-neuron it holds groups of 8 logical
# neighbours (``common.neuron_plan``'s tiles, as the standalone drop-neuron's kernels do), so that each thread
# makes its groups' Philox calls once; otherwise ``common.tile_plan``'s (or ``reduction_plan``'s) tiles.


@triton.jit
def _norm_act_drop_fwd_kernel(
    x_ptr,  # (N, C, S) strided input
    out_ptr,  # (N, C, S) strided output
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S, G, eps,  # G: statistics per sample (GroupNorm's groups) or C
    x_sn, x_sc, x_ss,
    out_sn, out_sc, out_ss,
    num_s_blocks, num_c_blocks,  # programs along the positions (the grouped axis with drop-neuron), the channels
    threshold,  # keep rule of the level (16-bit neuron or 32-bit unit threshold)
    dscale,  # fp32 1 / (1 - p) (1 without dropout)
    ACT: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # GROUPED: GroupNorm
    LEVEL: tl.constexpr,  # the level: None (no dropout), NEURON or CHANNEL
    S_UNIT_STRIDE: tl.constexpr,  # x_ss == out_ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # x_sc == out_sc == 1 (channels_last)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,  # positions per program (1 with drop-neuron)
    TILE: tl.constexpr,  # drop-neuron: ROW_GROUPS, CHANNEL_VECTORS or CHANNEL_GROUPS (else None)
    ALIGNED: tl.constexpr,  # drop-neuron: groups start at multiples of 8 (S % 8 == 0, or C % 8 == 0 when S == 1)
    BLOCK_G: tl.constexpr,  # drop-neuron: groups of 8 along the grouped axis per program (else 1)
    LANES: tl.constexpr,  # drop-neuron: neighbours per piece (1 for CHANNEL_VECTORS)
):
    if LEVEL == NEURON:
        n, c_group, g, first = program_neuron_tile(C, S, num_s_blocks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
        words = group_words(seed_ptr, first, ALIGNED)
        if TILE != CHANNEL_GROUPS:  # a group's elements share a channel: its constants load once
            mean, invstd, k1, scale, shift, always_kept = _folded_affine(
                stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c_group, N, C, G, eps, (n < N) & (c_group < C),
                threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
        for piece in tl.static_range(8 // LANES):
            c, s, j, in_bounds = neuron_piece(n, c_group, g, piece, N, C, S, TILE, LANES)
            keep = group_keep(words, first, j, threshold, ALIGNED)
            if TILE == CHANNEL_GROUPS:
                mean, invstd, k1, scale, shift, always_kept = _folded_affine(
                    stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, in_bounds,
                    threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
            x = tl.load(address(x_ptr, n, c, s, x_sn, x_sc, x_ss, S_UNIT_STRIDE, C_UNIT_STRIDE), mask=in_bounds,
                        other=0.0).to(tl.float32)
            z = tl.where(keep, _act(x * scale + shift, ACT), 0.0)
            tl.store(address(out_ptr, n, c, s, out_sn, out_sc, out_ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
                     z.to(out_ptr.dtype.element_ty), mask=in_bounds)
    else:
        n, c, s, nc_in_bounds = tile(N, C, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
        in_bounds = nc_in_bounds & (s < S)
        mean, invstd, k1, scale, shift, keep = _folded_affine(
            stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
            threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
        x_at = address(x_ptr, n, c, s, x_sn, x_sc, x_ss, S_UNIT_STRIDE, C_UNIT_STRIDE)
        if S_UNIT_STRIDE:  # rows of a dropped channel are never read (scale' = shift' = 0 gives +0)
            x = tl.load(x_at, mask=in_bounds & keep, other=0.0).to(tl.float32)
        else:
            x = tl.load(x_at, mask=in_bounds, other=0.0).to(tl.float32)
        tl.store(address(out_ptr, n, c, s, out_sn, out_sc, out_ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
                 _act(x * scale + shift, ACT).to(out_ptr.dtype.element_ty), mask=in_bounds)


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
def _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds, S_UNIT_STRIDE: tl.constexpr,
          C_UNIT_STRIDE: tl.constexpr):
    """The forward input and the output gradient at (n, c, s), in fp32."""
    x = tl.load(address(x_ptr, n, c, s, x_sn, x_sc, x_ss, S_UNIT_STRIDE, C_UNIT_STRIDE), mask=in_bounds, other=0.0)
    dy = tl.load(address(dy_ptr, n, c, s, dy_sn, dy_sc, dy_ss, S_UNIT_STRIDE, C_UNIT_STRIDE), mask=in_bounds,
                 other=0.0)
    return x.to(tl.float32), dy.to(tl.float32)


@triton.jit
def _sum_terms(x, dy, keep, mean, invstd, scale, shift, dscale, in_bounds, ACT: tl.constexpr):
    """``(dz, dz * xhat)`` of elements, 0 out of bounds: what the sums pass adds up."""
    dz = tl.where(in_bounds, _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT), 0.0)
    return dz, dz * ((x - mean) * invstd)


@triton.jit
def _dx_constants(stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c, N, C, G, S, eps, nc_in_bounds, threshold,
                  dscale, LEVEL: tl.constexpr, COUPLED: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """``(constants, keep)``: the per-(n, c) constants of ``_dx`` and the channel gate (k2, k3 only when
    COUPLED)."""
    mean, invstd, k1, scale, shift, keep = _folded_affine(
        stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, nc_in_bounds,
        threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
    k2 = k1
    k3 = k1
    if COUPLED:
        k2, k3 = _dx_coefficients(sums_ptr, n, c, N, C, G, S, k1, invstd, nc_in_bounds, GROUPED)
    return (mean, invstd, k1, k2, k3, scale, shift), keep


@triton.jit
def _dx(x, dy, keep, constants, dscale, ACT: tl.constexpr, COUPLED: tl.constexpr):
    """The input gradient ``k1 * dz (+ k2 * xhat + k3 when COUPLED)`` from ``_dx_constants``."""
    mean, invstd, k1, k2, k3, scale, shift = constants
    dx = k1 * _grad_at_affine(x, dy, scale, shift, keep, dscale, ACT)
    if COUPLED:
        dx = dx + k2 * ((x - mean) * invstd) + k3
    return dx


@triton.jit
def _norm_act_drop_bwd_sums_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    stats_ptr,  # (2, R, G) mean and variance (per channel: R = 1, G = C; per (sample, group): R = N)
    weight_ptr,  # (C,) affine weight (read only when HAS_WEIGHT)
    bias_ptr,  # (C,) affine bias (read only when HAS_BIAS)
    sums_ptr,  # fp32 sums, zeroed, added to: (2, C) dweight and dbias, then (2, N, G) per group (GROUPED)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S, G, eps,  # G: statistics per sample (GroupNorm's groups) or C
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    num_c_blocks, num_chunks,  # programs along the channels, the positions (K; drop-neuron: chunks of group blocks)
    chunk,  # positions per chunk, a multiple of BLOCK_S (unused with drop-neuron)
    blocks_per_chunk,  # BLOCK_S positions (drop-neuron: BLOCK_G groups) per block; blocks past the end are masked
    threshold,
    dscale,
    ACT: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # GROUPED: GroupNorm
    LEVEL: tl.constexpr,  # the level of the forward's mask: None, NEURON or CHANNEL
    S_UNIT_STRIDE: tl.constexpr,  # x_ss == dy_ss == 1
    C_UNIT_STRIDE: tl.constexpr,  # x_sc == dy_sc == 1
    BLOCK_N: tl.constexpr,  # samples per program (drop-neuron; 1 otherwise)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,  # positions per block of a chunk (1 with drop-neuron)
    TILE: tl.constexpr,  # drop-neuron's tiling, as in the forward
    ALIGNED: tl.constexpr,
    BLOCK_G: tl.constexpr,
    LANES: tl.constexpr,
):
    if LEVEL != NEURON:
        n, channels, k = reduction_rows(num_c_blocks, num_chunks, BLOCK_C)  # channels: [BC]
        c = channels[:, None]  # [BC, 1]
        mean, invstd, k1, scale, shift, keep = _folded_affine(
            stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, c < C,
            threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
        acc_dz = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        i = 0
        while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
            s = k * chunk + i * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)[None, :]  # [1, BS]
            in_bounds = (c < C) & (s < S)
            x, dy = _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds, S_UNIT_STRIDE,
                          C_UNIT_STRIDE)
            dz, dz_xhat = _sum_terms(x, dy, keep, mean, invstd, scale, shift, dscale, in_bounds, ACT)
            acc_dz += dz
            acc_dz_xhat += dz_xhat
            i += 1
        _add_sums(sums_ptr, weight_ptr, n, channels, N, C, G, tl.sum(acc_dz, axis=1), tl.sum(acc_dz_xhat, axis=1),
                  channels < C, GROUPED, HAS_WEIGHT)
    elif TILE == CHANNEL_GROUPS:  # S == 1: every element is its own (sample, channel), so nothing to reduce
        n, c_group, g, first = program_neuron_tile(C, S, num_chunks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
        words = group_words(seed_ptr, first, ALIGNED)
        for piece in tl.static_range(8 // LANES):
            c, s, j, in_bounds = neuron_piece(n, c_group, g, piece, N, C, S, TILE, LANES)
            keep = group_keep(words, first, j, threshold, ALIGNED)
            mean, invstd, k1, scale, shift, always_kept = _folded_affine(
                stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, in_bounds,
                threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
            x, dy = _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds, S_UNIT_STRIDE,
                          C_UNIT_STRIDE)
            dz, dz_xhat = _sum_terms(x, dy, keep, mean, invstd, scale, shift, dscale, in_bounds, ACT)
            _add_sums(sums_ptr, weight_ptr, n, c, N, C, G, dz, dz_xhat, in_bounds, GROUPED, HAS_WEIGHT)
    else:  # the forward's tiles, a chunk of group blocks per program
        k, c_block, n_block = split_pid(num_chunks, num_c_blocks)
        # a group's elements share a (sample, channel): its constants load once per program
        n, c, g, first = neuron_tile(n_block, c_block, k * blocks_per_chunk, C, S, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
        # (named throwaways below: a `_` reassigned in the loop would be a loop-carried value changing type)
        mean, invstd, k1, scale, shift, always_kept = _folded_affine(
            stats_ptr, weight_ptr, bias_ptr, seed_ptr, n, c, N, C, G, eps, (n < N) & (c < C),
            threshold, dscale, LEVEL, GROUPED, HAS_WEIGHT, HAS_BIAS)
        if TILE == CHANNEL_VECTORS:  # [groups, channels]
            acc_dz = tl.zeros([BLOCK_N * BLOCK_G, BLOCK_C], dtype=tl.float32)
        else:  # [groups, lanes]
            acc_dz = tl.zeros([BLOCK_N * BLOCK_C * BLOCK_G, LANES], dtype=tl.float32)
        acc_dz_xhat = tl.zeros_like(acc_dz)
        i = 0
        while i < blocks_per_chunk:  # a while loop: Triton 3.6's interpreter cannot take a runtime range bound
            n_again, c_again, g, first = neuron_tile(n_block, c_block, k * blocks_per_chunk + i, C, S, TILE,
                                                     BLOCK_N, BLOCK_C, BLOCK_G)
            words = group_words(seed_ptr, first, ALIGNED)
            # a thread holds its groups' pieces, so each Philox call runs once (in one thread)
            for piece in tl.static_range(8 // LANES):
                c_again, s, j, in_bounds = neuron_piece(n, c, g, piece, N, C, S, TILE, LANES)
                keep = group_keep(words, first, j, threshold, ALIGNED)
                x, dy = _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds,
                              S_UNIT_STRIDE, C_UNIT_STRIDE)
                dz, dz_xhat = _sum_terms(x, dy, keep, mean, invstd, scale, shift, dscale, in_bounds, ACT)
                acc_dz += dz
                acc_dz_xhat += dz_xhat
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
    N, C, S, G, eps,  # G: statistics per sample (GroupNorm's groups) or C
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    dx_sn, dx_sc, dx_ss,
    num_s_blocks, num_c_blocks,  # programs along the positions (the grouped axis with drop-neuron), the channels
    threshold,
    dscale,
    ACT: tl.constexpr, GROUPED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # GROUPED: GroupNorm
    LEVEL: tl.constexpr,  # the level of the forward's mask: None, NEURON or CHANNEL
    COUPLED: tl.constexpr,  # the statistics depend on x (batch statistics, GroupNorm): dx = k1 dz + k2 xhat + k3
    S_UNIT_STRIDE: tl.constexpr,  # x_ss == dy_ss == dx_ss == 1
    C_UNIT_STRIDE: tl.constexpr,  # x_sc == dy_sc == dx_sc == 1
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,  # positions per program (1 with drop-neuron)
    TILE: tl.constexpr,  # drop-neuron's tiling, as in the forward
    ALIGNED: tl.constexpr,
    BLOCK_G: tl.constexpr,
    LANES: tl.constexpr,
):
    if LEVEL == NEURON:
        n, c_group, g, first = program_neuron_tile(C, S, num_s_blocks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
        words = group_words(seed_ptr, first, ALIGNED)
        if TILE != CHANNEL_GROUPS:
            constants, always_kept = _dx_constants(
                stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c_group, N, C, G, S, eps,
                (n < N) & (c_group < C), threshold, dscale, LEVEL, COUPLED, GROUPED, HAS_WEIGHT, HAS_BIAS)
        for piece in tl.static_range(8 // LANES):
            c, s, j, in_bounds = neuron_piece(n, c_group, g, piece, N, C, S, TILE, LANES)
            keep = group_keep(words, first, j, threshold, ALIGNED)
            if TILE == CHANNEL_GROUPS:
                constants, always_kept = _dx_constants(
                    stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c, N, C, G, S, eps, in_bounds, threshold,
                    dscale, LEVEL, COUPLED, GROUPED, HAS_WEIGHT, HAS_BIAS)
            x, dy = _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds, S_UNIT_STRIDE,
                          C_UNIT_STRIDE)
            tl.store(address(dx_ptr, n, c, s, dx_sn, dx_sc, dx_ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
                     _dx(x, dy, keep, constants, dscale, ACT, COUPLED).to(dx_ptr.dtype.element_ty), mask=in_bounds)
    else:
        n, c, s, nc_in_bounds = tile(N, C, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
        in_bounds = nc_in_bounds & (s < S)
        constants, keep = _dx_constants(stats_ptr, weight_ptr, bias_ptr, sums_ptr, seed_ptr, n, c, N, C, G, S, eps,
                                        nc_in_bounds, threshold, dscale, LEVEL, COUPLED, GROUPED, HAS_WEIGHT, HAS_BIAS)
        x, dy = _x_dy(x_ptr, dy_ptr, n, c, s, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, in_bounds, S_UNIT_STRIDE,
                      C_UNIT_STRIDE)
        tl.store(address(dx_ptr, n, c, s, dx_sn, dx_sc, dx_ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
                 _dx(x, dy, keep, constants, dscale, ACT, COUPLED).to(dx_ptr.dtype.element_ty), mask=in_bounds)


def _drop_args(seed, p: float, level, fallback_ptr: torch.Tensor):
    """``(seed pointer, threshold, dscale)``: a dummy pointer and no-op values without dropout."""
    if level is None:
        return fallback_ptr, 0, 1.0
    threshold = neuron_threshold(p) if level == DropLevel.NEURON else unit_threshold(p)
    return seed, threshold, keep_scale(p)


def _norm_args(weight, bias, stats: torch.Tensor, num_groups: int, C: int):
    """``(weight pointer, bias pointer, G, constexprs)``: the statistics stand in for absent parameters."""
    norm = dict(GROUPED=num_groups > 0, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)
    return (stats if weight is None else weight), (stats if bias is None else bias), num_groups or C, norm


def _tiling(N: int, C: int, S: int, strides, level, element_size: int):
    """``(grid, (num blocks along S, num_c_blocks), constexprs)`` of the elementwise passes: the level, the
    layout, and drop-neuron's tiles or the plain ones (the other's constexprs unused)."""
    layout = unit_strides(S, *strides)
    if level == DropLevel.NEURON:
        grid, blocks, meta = neuron_plan(N, C, S, layout["C_UNIT_STRIDE"], element_size)
        return grid, blocks, dict(meta, LEVEL=int(level), BLOCK_S=1, **layout)
    grid, blocks, meta = tile_plan(N, C, S, layout["C_UNIT_STRIDE"])
    return grid, blocks, dict(meta, LEVEL=None if level is None else int(level), TILE=None, ALIGNED=None, BLOCK_G=1,
                              LANES=None, **layout)


@functools.lru_cache(maxsize=1024)
def _fwd_plan(N: int, C: int, S: int, x_strides, out_strides, level, element_size: int):
    """``(grid, strides, block counts, constexprs)`` of the apply pass."""
    grid, blocks, meta = _tiling(N, C, S, (x_strides, out_strides), level, element_size)
    return grid, (*x_strides, *out_strides), blocks, meta


def norm_act_drop_fwd_triton(x: torch.Tensor, weight, bias, stats: torch.Tensor, seed, num_groups: int, eps: float,
                             p: float, act: bool, level) -> torch.Tensor:
    """``drop(relu(x * scale + shift))`` with the affine made from ``stats`` (2, R, G); the output keeps
    x's layout (channels_last stays channels_last). ``level``: None (no dropout), ``DropLevel.NEURON`` or
    ``DropLevel.CHANNEL``. One launch."""
    out = empty_dense_like(x)
    x, (N, C, S), x_strides = ncs(x)
    _, _, out_strides = ncs(out)
    grid, strides, tail, meta = _fwd_plan(N, C, S, x_strides, out_strides, level, x.element_size())
    weight, bias, G, norm = _norm_args(weight, bias, stats, num_groups, C)
    seed_ptr, threshold, dscale = _drop_args(seed, p, level, stats)
    launcher(_norm_act_drop_fwd_kernel)[grid](x, out, stats, weight, bias, seed_ptr, N, C, S, G, eps, *strides, *tail,
                                              threshold, dscale, ACT=act, **norm, **meta)
    return out


def _grad_view(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The incoming gradient in x's layout kind (one copy only when they differ)."""
    if grad.stride() == x.stride():
        return grad
    out = empty_dense(grad.shape, is_channels_minor(x), grad.dtype, grad.device)
    out.copy_(grad)
    return out


@functools.lru_cache(maxsize=1024)
def _bwd_plan(N: int, C: int, S: int, x_strides, dy_strides, dx_strides, level, element_size: int):
    """The sums pass's and the input-gradient pass's ``(grid, strides, block counts, constexprs)``."""
    grid, blocks, meta = _tiling(N, C, S, (x_strides, dy_strides, dx_strides), level, element_size)
    strides = (*x_strides, *dy_strides)
    dx = grid, (*strides, *dx_strides), blocks, meta
    if level != DropLevel.NEURON:
        sums_grid, sums_blocks, sums_meta = reduction_plan(N, C, S, meta["C_UNIT_STRIDE"])
        return (sums_grid, strides, sums_blocks, dict(meta, BLOCK_N=1, **sums_meta)), dx
    # drop-neuron's sums walk the forward's tiles, a chunk of group blocks per program
    num_g_blocks, num_c_blocks = blocks
    rows = cdiv(N, meta["BLOCK_N"]) * num_c_blocks
    if meta["TILE"] == CHANNEL_GROUPS.value:  # S == 1: a program's sums are its elements
        num_chunks, blocks_per_chunk = num_g_blocks, 1
    else:
        num_chunks, blocks_per_chunk = chunks(num_g_blocks, rows)
    return ((rows * num_chunks,), strides, (num_c_blocks, num_chunks, 0, blocks_per_chunk), meta), dx


def norm_act_drop_bwd_triton(grad: torch.Tensor, x: torch.Tensor, weight, bias, stats: torch.Tensor, seed,
                             num_groups: int, eps: float, p: float, act: bool, level, coupled: bool):
    """``(dx, dparams)``: the input gradient and the (2, C) fp32 weight and bias gradients. Two launches: the
    sums pass adds into one zeroed buffer, the input-gradient pass reads the constants it needs from it.
    ``level`` as for the forward; ``coupled``: the statistics depend on x (batch statistics or GroupNorm)."""
    dx = empty_dense_like(x)
    dy, _, dy_strides = ncs(_grad_view(grad, x))
    x, (N, C, S), x_strides = ncs(x)
    _, _, dx_strides = ncs(dx)
    sums_pass, dx_pass = _bwd_plan(N, C, S, x_strides, dy_strides, dx_strides, level, x.element_size())
    weight, bias, G, norm = _norm_args(weight, bias, stats, num_groups, C)
    sums = torch.zeros(2 * C + (2 * N * G if num_groups else 0), dtype=torch.float32, device=x.device)
    seed_ptr, threshold, dscale = _drop_args(seed, p, level, stats)
    grid, strides, tail, meta = sums_pass
    launcher(_norm_act_drop_bwd_sums_kernel)[grid](x, dy, stats, weight, bias, sums, seed_ptr, N, C, S, G, eps,
                                                   *strides, *tail, threshold, dscale, ACT=act, **norm, **meta)
    grid, strides, tail, meta = dx_pass
    launcher(_norm_act_drop_bwd_dx_kernel)[grid](x, dy, dx, stats, weight, bias, sums, seed_ptr, N, C, S, G, eps,
                                                 *strides, *tail, threshold, dscale, ACT=act, COUPLED=coupled, **norm,
                                                 **meta)
    return dx, sums[:2 * C].view(2, C)
