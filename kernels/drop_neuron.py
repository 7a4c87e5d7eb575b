"""Drop-neuron: one Bernoulli draw per element, 8 elements per Philox call.

Forward and backward are the same kernel: backward applies the mask, regenerated
from the seed, to the incoming gradient.
"""

import functools

import torch
import triton
import triton.language as tl

from .grid import cdiv, launcher, next_power_of_2

from effdrop_triton._layout import empty_dense_like, is_channels_last
from effdrop_triton.masks import keep_scale, neuron_threshold

from .philox import STREAM_NEURON, philox_words, select_half_word


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
    pid = tl.program_id(0).to(tl.int64)
    call = pid * CALLS + tl.arange(0, CALLS).to(tl.int64)  # [CALLS]
    seed = tl.load(seed_ptr)
    w0, w1, w2, w3 = philox_words(seed, call, STREAM_NEURON)
    # one thread owns a call's pieces, so each Philox call runs once
    for piece in tl.static_range(8 // LANES):
        lane = piece * LANES + tl.arange(0, LANES)[None, :]  # [1, LANES]
        offs = call[:, None] * 8 + lane  # [CALLS, LANES]: element 8 * call + lane
        in_bounds = offs < numel
        keep = select_half_word(w0[:, None], w1[:, None], w2[:, None], w3[:, None], lane) < threshold
        x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0).to(tl.float32)
        y = tl.where(keep, x * scale, 0.0)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _drop_neuron_channels_last_kernel(
    x_ptr,  # (N, S, C) memory of an (N, C, *spatial) channels_last input
    out_ptr,  # (N, S, C) output, same layout
    seed_ptr,  # () int64 seed
    C,
    S,
    num_s_blocks,
    num_c_blocks,
    threshold,
    scale,
    BLOCK_S8: tl.constexpr,  # groups of 8 spatial positions per program
    BLOCK_C: tl.constexpr,
    ALIGNED: tl.constexpr,  # S % 8 == 0: a spatial group of 8 is one Philox call (else it straddles two)
):
    pid = tl.program_id(0).to(tl.int64)
    s_block = pid % num_s_blocks
    c_block = (pid // num_s_blocks) % num_c_blocks
    n = pid // (num_s_blocks * num_c_blocks)
    group = (s_block * BLOCK_S8 + tl.arange(0, BLOCK_S8).to(tl.int64))[:, None]  # [BS8, 1]
    c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :]  # [1, BC]
    seed = tl.load(seed_ptr)
    # the counter follows the logical (N, C, S) row-major index, not the memory order
    first_index = (n * C + c) * S + group * 8  # [BS8, BC]: logical index of position j = 0
    if ALIGNED:
        w0, w1, w2, w3 = philox_words(seed, first_index >> 3, STREAM_NEURON)
    else:  # the 8 positions of a group straddle two calls
        a0, a1, a2, a3 = philox_words(seed, first_index >> 3, STREAM_NEURON)
        b0, b1, b2, b3 = philox_words(seed, (first_index >> 3) + 1, STREAM_NEURON)
    # the 8 positions of a group stay in one thread, so no thread repeats another's Philox call
    for j in tl.static_range(8):
        s = group * 8 + j
        in_bounds = (s < S) & (c < C)
        offs = n * S * C + s * C + c
        if ALIGNED:
            u16 = select_half_word(w0, w1, w2, w3, tl.full([1, 1], j, tl.int32))
        else:
            index = first_index + j
            second = (index >> 3) != (first_index >> 3)
            u16 = select_half_word(tl.where(second, b0, a0), tl.where(second, b1, a1), tl.where(second, b2, a2),
                                   tl.where(second, b3, a3), (index & 7).to(tl.int32))
        keep = u16 < threshold
        x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0).to(tl.float32)
        y = tl.where(keep, x * scale, 0.0)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=in_bounds)


def _launch_flat(x: torch.Tensor, out: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    numel = x.numel()
    launcher(_drop_neuron_flat_kernel)[(cdiv(numel, 8 * FLAT_CALLS),)](
        x, out, seed, numel, neuron_threshold(p), keep_scale(p), CALLS=FLAT_CALLS, LANES=min(8, 16 // x.element_size()),
        num_warps=4)


FLAT_CALLS = 256  # Philox calls per program of the flat kernel


@functools.lru_cache(maxsize=1024)
def _channels_last_plan(N: int, C: int, S: int, element_size: int):
    block_c = min(64, next_power_of_2(C))
    block_s8 = min(next_power_of_2(cdiv(S, 8)), max(1, 1024 // block_c))
    num_s_blocks = cdiv(S, 8 * block_s8)
    num_c_blocks = cdiv(C, block_c)
    # as many threads as 16-byte vectors in one [block_s8, block_c] piece: none computes a call twice
    vectors = block_s8 * block_c * element_size // 16
    meta = dict(BLOCK_S8=block_s8, BLOCK_C=block_c, ALIGNED=S % 8 == 0, num_warps=max(1, min(4, vectors // 32)))
    return (N * num_c_blocks * num_s_blocks,), (C, S, num_s_blocks, num_c_blocks), meta


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
