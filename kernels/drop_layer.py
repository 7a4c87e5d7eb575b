"""Drop-layer: ``shortcut + gate * branch / (1 - p)`` in one pass, gate per sample or per batch.

The branch of a dropped sample is never read.
"""

import functools

import torch
import triton
import triton.language as tl

from effdrop_triton.masks import keep_scale, unit_threshold

from .common import LAYER, cdiv, launcher, next_power_of_2, unit_keep


@triton.jit
def _drop_layer_kernel(
    branch_ptr,  # (N, M) per-sample-contiguous branch
    shortcut_ptr,  # (N, M) shortcut, same strides
    out_ptr,  # (N, M) output, same strides
    seed_ptr,  # () int64 seed
    N,
    M,  # elements per sample
    num_blocks,  # programs along a sample
    threshold,
    scale,
    PER_SAMPLE: tl.constexpr,
    ROWS: tl.constexpr,  # samples per program (several when a sample is small)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n = (pid // num_blocks) * ROWS + tl.arange(0, ROWS).to(tl.int64)[:, None]  # [ROWS, 1]
    idx = (pid % num_blocks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)[None, :]  # [1, BLOCK]
    in_bounds = (n < N) & (idx < M)
    offs = n * M + idx
    seed = tl.load(seed_ptr)
    unit = n * 0  # batch mode: one gate for every sample
    if PER_SAMPLE:
        unit = n
    keep = unit_keep(seed, unit, LAYER, threshold)  # [ROWS, 1]
    shortcut = tl.load(shortcut_ptr + offs, mask=in_bounds, other=0.0).to(tl.float32)
    branch = tl.load(branch_ptr + offs, mask=in_bounds & keep, other=0.0).to(tl.float32)
    y = tl.where(keep, shortcut + branch * scale, shortcut)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=in_bounds)


@functools.lru_cache(maxsize=1024)
def _plan(N: int, M: int, per_sample: bool):
    block = min(4096, next_power_of_2(M))
    rows = min(next_power_of_2(N), max(1, 4096 // block))
    num_blocks = cdiv(M, block)
    meta = dict(PER_SAMPLE=per_sample, ROWS=rows, BLOCK=block, num_warps=4 if rows * block <= 1024 else 8)
    return (cdiv(N, rows) * num_blocks,), num_blocks, meta


def drop_layer_triton(branch: torch.Tensor, shortcut: torch.Tensor, out: torch.Tensor, seed: torch.Tensor,
                      p: float, per_sample: bool) -> None:
    """Fused residual add into ``out``; all three share one per-sample-dense layout."""
    N = branch.shape[0]
    numel = branch.numel()
    if numel == 0:
        return
    M = numel // N
    grid, num_blocks, meta = _plan(N, M, per_sample)
    launcher(_drop_layer_kernel)[grid](branch, shortcut, out, seed, N, M, num_blocks, unit_threshold(p), keep_scale(p),
                                       **meta)
