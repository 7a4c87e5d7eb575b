"""Gate whole (sample, channel-range) units: drop-channel, drop-path and the branch
gradient of drop-layer share this kernel.

An (N, C, S) source is copied to an (N, C, S) destination with every channel scaled
by its unit's gate; unit of (n, c) = ``n * units_per_sample`` (per-sample mode only)
``+ unit_base + c // channels_per_unit``. A program covers several samples when C * S is small. Rows of a dropped unit are never read
(channels-first layouts).
"""

import functools

import torch
import triton
import triton.language as tl

from .grid import cdiv, launcher, next_power_of_2

from effdrop_triton.masks import keep_scale, unit_threshold

from effdrop_triton._layout import _ncs_geometry, ncs

from .philox import STREAM_PATH, unit_keep


@triton.jit
def _unit_gate_kernel(
    src_ptr,  # (N, C, S) strided input
    dst_ptr,  # (N, C, S) strided output
    seed_ptr,  # () int64 seed
    N,
    C,
    S,
    src_sn, src_sc, src_ss,
    dst_sn, dst_sc, dst_ss,
    sample_units,  # units per sample in per-sample mode, 0 in batch mode
    unit_base,
    channels_per_unit,
    num_s_blocks,
    num_c_blocks,
    threshold,  # int64: keep when Philox word 0 is below this
    scale,  # fp32 1 / (1 - p)
    STREAM: tl.constexpr,
    S_UNIT_STRIDE: tl.constexpr,  # src_ss == dst_ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # src_sc == dst_sc == 1 (channels_last)
    BLOCK_N: tl.constexpr,  # samples per program (several when C * S is small)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    s_block = pid % num_s_blocks
    c_block = (pid // num_s_blocks) % num_c_blocks
    n_block = pid // (num_s_blocks * num_c_blocks)
    n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64))[:, None, None]  # [BN, 1, 1]
    c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :, None]  # [1, BC, 1]
    s = (s_block * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64))[None, None, :]  # [1, 1, BS]
    seed = tl.load(seed_ptr)
    keep = unit_keep(seed, n * sample_units + unit_base + c // channels_per_unit, STREAM, threshold)  # [BN, BC, 1]
    in_bounds = (n < N) & (c < C) & (s < S)
    if S_UNIT_STRIDE:
        src_ss = 1
        dst_ss = 1
    if C_UNIT_STRIDE:
        src_sc = 1
        dst_sc = 1
    src = src_ptr + n * src_sn + c * src_sc + s * src_ss
    dst = dst_ptr + n * dst_sn + c * dst_sc + s * dst_ss
    if C_UNIT_STRIDE:
        # channels interleave within each cache line, so skipping dropped ones saves no traffic;
        # a mask that is constant along the vector keeps the loads 128-bit wide
        x = tl.load(src, mask=in_bounds, other=0.0).to(tl.float32)
    else:
        x = tl.load(src, mask=in_bounds & keep, other=0.0).to(tl.float32)
    y = tl.where(keep, x * scale, 0.0)
    tl.store(dst, y.to(dst_ptr.dtype.element_ty), mask=in_bounds)


@functools.lru_cache(maxsize=1024)
def _plan(N: int, C: int, S: int, src_strides, dst_strides, sample_units: int, unit_base: int, channels_per_unit: int):
    """``(grid, runtime arguments, constexprs)`` of one geometry (cached: the launch arithmetic is host time)."""
    s_unit = S > 1 and src_strides[2] == 1 and dst_strides[2] == 1
    c_unit = src_strides[1] == 1 and dst_strides[1] == 1 and not s_unit
    if c_unit:
        # channels_last: a thread holds a vector of channels, so it draws their gates once and
        # reuses them over many positions (64 channels x 128 positions per program)
        block_c = min(64, next_power_of_2(C))
        block_s = max(1, min(next_power_of_2(S), 8192 // block_c))
    else:
        block_s = min(1024, next_power_of_2(S))
        block_c = max(1, min(next_power_of_2(C), 2048 // block_s))
    block_n = max(1, min(next_power_of_2(N), (8192 if c_unit else 2048) // (block_c * block_s)))
    num_s_blocks = cdiv(S, block_s)
    num_c_blocks = cdiv(C, block_c)
    grid = (cdiv(N, block_n) * num_c_blocks * num_s_blocks,)
    args = (N, C, S, *src_strides, *dst_strides, sample_units, unit_base, channels_per_unit, num_s_blocks,
            num_c_blocks)
    meta = dict(S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s,
                num_warps=4)
    return grid, args, meta


def unit_gate_triton(src, dst, seed: torch.Tensor, p: float, *, stream: int, per_sample: bool, units_per_sample: int,
                     unit_base: int = 0, channels_per_unit: int = 1) -> None:
    """Write the gated source into the destination; both are ``(tensor, (N, C, S), strides)`` triples of
    ``effdrop_triton._layout.ncs`` (any strides)."""
    src, (N, C, S), src_strides = src
    dst, _, dst_strides = dst
    if N * C * S == 0:
        return
    grid, args, meta = _plan(N, C, S, src_strides, dst_strides, units_per_sample if per_sample else 0, unit_base,
                             channels_per_unit)
    launcher(_unit_gate_kernel)[grid](src, dst, seed, *args, unit_threshold(p), keep_scale(p), STREAM=stream, **meta)


@functools.lru_cache(maxsize=1024)
def _path_plan(geometries, per_sample: bool):
    """The launches of a multi-path gate: one per path, the unit of path ``i`` of sample ``n`` is
    ``n * paths + i``, a path's channels share it."""
    paths = len(geometries)
    plans = []
    for index, (shape, src_strides, dst_strides) in enumerate(geometries):
        src_geometry, dst_geometry = _ncs_geometry(shape, src_strides), _ncs_geometry(shape, dst_strides)
        if src_geometry is None or dst_geometry is None or 0 in shape:
            plans.append(None if 0 in shape else False)  # False: the path's memory needs a contiguous copy
            continue
        (N, C, S), src_ncs = src_geometry
        plans.append(_plan(N, C, S, src_ncs, dst_geometry[1], paths if per_sample else 0, index, C))
    return plans


def path_gate_triton(srcs, dsts, seed: torch.Tensor, p: float, per_sample: bool) -> None:
    """Gate path ``i``: ``dsts[i] = srcs[i] * keep[n, i] / (1 - p)`` for (N, C_i, *) tensors of any strides,
    one launch per path (the launch arithmetic of a geometry is cached)."""
    plans = _path_plan(tuple((s.shape, s.stride(), d.stride()) for s, d in zip(srcs, dsts)), per_sample)
    threshold, scale = unit_threshold(p), keep_scale(p)
    for index, (src, dst, plan) in enumerate(zip(srcs, dsts, plans)):
        if plan is False:
            unit_gate_triton(ncs(src), ncs(dst), seed, p, stream=STREAM_PATH, per_sample=per_sample,
                             units_per_sample=len(srcs), unit_base=index, channels_per_unit=src.shape[1])
        elif plan is not None:
            grid, args, meta = plan
            launcher(_unit_gate_kernel)[grid](src, dst, seed, *args, threshold, scale, STREAM=STREAM_PATH, **meta)
