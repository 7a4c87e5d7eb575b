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

from effdrop_triton._layout import _ncs_geometry, ncs
from effdrop_triton.levels import DropLevel
from effdrop_triton.masks import keep_scale, unit_threshold

from .common import address, launcher, tile, tile_plan, unit_keep, unit_strides


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
    LEVEL: tl.constexpr,  # the level whose stream gates (levels.DropLevel)
    S_UNIT_STRIDE: tl.constexpr,  # src_ss == dst_ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # src_sc == dst_sc == 1 (channels_last)
    BLOCK_N: tl.constexpr,  # samples per program (several when C * S is small)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, s, nc_in_bounds = tile(N, C, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
    keep = unit_keep(tl.load(seed_ptr), n * sample_units + unit_base + c // channels_per_unit, LEVEL,
                     threshold)  # [BN, BC, 1]
    in_bounds = nc_in_bounds & (s < S)
    src = address(src_ptr, n, c, s, src_sn, src_sc, src_ss, S_UNIT_STRIDE, C_UNIT_STRIDE)
    if C_UNIT_STRIDE:
        # channels interleave within each cache line, so skipping dropped ones saves no traffic;
        # a mask that is constant along the vector keeps the loads 128-bit wide
        x = tl.load(src, mask=in_bounds, other=0.0).to(tl.float32)
    else:
        x = tl.load(src, mask=in_bounds & keep, other=0.0).to(tl.float32)
    y = tl.where(keep, x * scale, 0.0)
    tl.store(address(dst_ptr, n, c, s, dst_sn, dst_sc, dst_ss, S_UNIT_STRIDE, C_UNIT_STRIDE),
             y.to(dst_ptr.dtype.element_ty), mask=in_bounds)


@functools.lru_cache(maxsize=1024)
def _plan(N: int, C: int, S: int, src_strides, dst_strides, sample_units: int, unit_base: int, channels_per_unit: int,
          level: int):
    """``(grid, runtime arguments, constexprs)`` of one geometry (cached: the launch arithmetic is host time)."""
    layout = unit_strides(S, src_strides, dst_strides)
    # channels_last: a thread holds a vector of channels, so it draws their gates once and reuses them
    # over many positions
    grid, blocks, meta = tile_plan(N, C, S, layout["C_UNIT_STRIDE"])
    args = (N, C, S, *src_strides, *dst_strides, sample_units, unit_base, channels_per_unit, *blocks)
    return grid, args, dict(meta, LEVEL=int(level), **layout)


def unit_gate_triton(src, dst, seed: torch.Tensor, p: float, *, level: int, per_sample: bool, units_per_sample: int,
                     unit_base: int = 0, channels_per_unit: int = 1) -> None:
    """Write the gated source into the destination; both are ``(tensor, (N, C, S), strides)`` triples of
    ``effdrop_triton._layout.ncs`` (any strides). ``level``: the ``DropLevel`` whose stream gates."""
    src, (N, C, S), src_strides = src
    dst, _, dst_strides = dst
    if N * C * S == 0:
        return
    grid, args, meta = _plan(N, C, S, src_strides, dst_strides, units_per_sample if per_sample else 0, unit_base,
                             channels_per_unit, level)
    launcher(_unit_gate_kernel)[grid](src, dst, seed, *args, unit_threshold(p), keep_scale(p), **meta)


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
        plans.append(_plan(N, C, S, src_ncs, dst_geometry[1], paths if per_sample else 0, index, C, DropLevel.PATH))
    return plans


def path_gate_triton(srcs, dsts, seed: torch.Tensor, p: float, per_sample: bool) -> None:
    """Gate path ``i``: ``dsts[i] = srcs[i] * keep[n, i] / (1 - p)`` for (N, C_i, *) tensors of any strides,
    one launch per path (the launch arithmetic of a geometry is cached)."""
    plans = _path_plan(tuple((s.shape, s.stride(), d.stride()) for s, d in zip(srcs, dsts)), per_sample)
    threshold, scale = unit_threshold(p), keep_scale(p)
    for index, (src, dst, plan) in enumerate(zip(srcs, dsts, plans)):
        if plan is False:
            unit_gate_triton(ncs(src), ncs(dst), seed, p, level=DropLevel.PATH, per_sample=per_sample,
                             units_per_sample=len(srcs), unit_base=index, channels_per_unit=src.shape[1])
        elif plan is not None:
            grid, args, meta = plan
            launcher(_unit_gate_kernel)[grid](src, dst, seed, *args, threshold, scale, **meta)
