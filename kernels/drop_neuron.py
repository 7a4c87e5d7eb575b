"""Drop-neuron: one Bernoulli draw per element, 8 elements per Philox call.

Forward and backward are the same kernel: backward applies the mask, regenerated
from the seed, to the incoming gradient.
"""

import functools

import torch
import triton
import triton.language as tl

from effdrop_triton._layout import empty_dense_like, is_channels_last
from effdrop_triton.masks import keep_scale, neuron_threshold

from .common import cdiv, group_keep, group_words, launcher, neuron_piece, neuron_plan, program_neuron_tile


@triton.jit
def _drop_neuron_flat_kernel(
    x_ptr,  # (numel,) input, contiguous
    out_ptr,  # (numel,) output, contiguous
    seed_ptr,  # () int64 seed
    numel,
    threshold,  # keep when the 16-bit number is below this
    scale,  # fp32 1 / (1 - p)
    CALLS: tl.constexpr,  # Philox calls per program (8 elements each)
    LANES: tl.constexpr,  # elements per 16-byte vector: the 8 of a call are moved in 8 // LANES pieces
):
    first = (tl.program_id(0).to(tl.int64) * CALLS + tl.arange(0, CALLS).to(tl.int64))[:, None] * 8  # [CALLS, 1]
    words = group_words(seed_ptr, first, True)
    # one thread owns a call's pieces, so each Philox call runs once
    for piece in tl.static_range(8 // LANES):
        lane = piece * LANES + tl.arange(0, LANES)[None, :]  # [1, LANES]
        offs = first + lane  # [CALLS, LANES]
        in_bounds = offs < numel
        x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0).to(tl.float32)
        y = tl.where(group_keep(words, first, lane, threshold, True), x * scale, 0.0)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _drop_neuron_channels_last_kernel(
    x_ptr,  # (N, S, C) memory of an (N, C, *spatial) channels_last input
    out_ptr,  # (N, S, C) output, same layout
    seed_ptr,  # () int64 seed
    N,
    C,
    S,
    num_g_blocks,
    num_c_blocks,
    threshold,
    scale,
    TILE: tl.constexpr,  # the tiles of common.neuron_plan (CHANNEL_VECTORS: 8 positions per channel)
    ALIGNED: tl.constexpr,  # S % 8 == 0: a spatial group of 8 is one Philox call (else it straddles two)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,  # groups of 8 positions per program
    LANES: tl.constexpr,
):
    # the counter follows the logical (N, C, S) row-major index, not the memory order
    n, c_group, g, first = program_neuron_tile(C, S, num_g_blocks, num_c_blocks, TILE, BLOCK_N, BLOCK_C, BLOCK_G)
    words = group_words(seed_ptr, first, ALIGNED)
    # the 8 positions of a group stay in one thread, so no thread repeats another's Philox call
    for piece in tl.static_range(8 // LANES):
        c, s, j, in_bounds = neuron_piece(n, c_group, g, piece, N, C, S, TILE, LANES)
        keep = group_keep(words, first, j, threshold, ALIGNED)
        offs = (n * S + s) * C + c
        x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, tl.where(keep, x * scale, 0.0).to(out_ptr.dtype.element_ty), mask=in_bounds)


FLAT_CALLS = 256  # Philox calls per program of the flat kernel


def _launch_flat(x: torch.Tensor, out: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    numel = x.numel()
    launcher(_drop_neuron_flat_kernel)[(cdiv(numel, 8 * FLAT_CALLS),)](
        x, out, seed, numel, neuron_threshold(p), keep_scale(p), CALLS=FLAT_CALLS, LANES=min(8, 16 // x.element_size()),
        num_warps=4)


@functools.lru_cache(maxsize=1024)
def _channels_last_plan(N: int, C: int, S: int, element_size: int):
    grid, blocks, meta = neuron_plan(N, C, S, True, element_size)
    return grid, (N, C, S, *blocks), meta


def _launch_channels_last(x: torch.Tensor, out: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    N, C = x.shape[0], x.shape[1]
    grid, args, meta = _channels_last_plan(N, C, x.numel() // (N * C), x.element_size())
    launcher(_drop_neuron_channels_last_kernel)[grid](x, out, seed, *args, neuron_threshold(p), keep_scale(p), **meta)


def drop_neuron_triton(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``x * mask / (1 - p)`` with the documented drop-neuron mask; channels_last stays channels_last."""
    out = empty_dense_like(x)
    if x.numel() == 0:
        return out
    if x.is_contiguous():
        _launch_flat(x, out, seed, p)
    elif is_channels_last(x):
        _launch_channels_last(x, out, seed, p)
    else:  # other strides: the counter follows the logical order, so read a contiguous copy
        _launch_flat(x.contiguous(), out, seed, p)
    return out
