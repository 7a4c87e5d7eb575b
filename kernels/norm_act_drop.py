"""Apply pass and backward passes of the fused norm -> affine -> ReLU -> dropout op.

The per-channel constants come in as tables of shape (1, C) (BatchNorm) or (N, C)
(GroupNorm), read with row stride ``table_sn`` (0 or C). Every pass recomputes the
affine output ``z = x * scale' + shift'`` with dropout's ``1 / (1 - p)`` folded into the
affine as the fallback does (``scale' = shift' = 0`` for a dropped channel), so forward
and backward see the same ReLU mask. Dropout masks follow ``effdrop_triton.philox``:
drop-channel gates unit ``n * C + c`` on the channel stream, drop-neuron takes the
16-bit number of the element's logical row-major index on the neuron stream.
"""

import torch
import triton
import triton.language as tl

from effdrop_triton._layout import as_ncs, empty_dense, empty_dense_like, is_channels_minor
from effdrop_triton.philox import keep_scale, neuron_threshold, unit_threshold

from .norm_stats import stats_blocks
from .philox import STREAM_CHANNEL, STREAM_NEURON, philox_words, select_half_word, unit_keep

DROP_NEURON: tl.constexpr = tl.constexpr(1)
DROP_CHANNEL: tl.constexpr = tl.constexpr(2)


@triton.jit
def _folded_affine(scale_ptr, shift_ptr, seed_ptr, n, c, C, table_sn, in_bounds, threshold, dscale,
                   DROP: tl.constexpr):
    """``(scale', shift', keep)`` for (n, c) index tensors: the affine with dropout's scale folded in.

    ``keep`` is the channel gate (always true unless drop-channel)."""
    table = n * table_sn + c
    scale = tl.load(scale_ptr + table, mask=in_bounds, other=0.0)
    shift = tl.load(shift_ptr + table, mask=in_bounds, other=0.0)
    keep = c >= 0
    if DROP == DROP_CHANNEL:
        keep = unit_keep(tl.load(seed_ptr), n * C + c, STREAM_CHANNEL, threshold)
        scale = tl.where(keep, scale * dscale, 0.0)
        shift = tl.where(keep, shift * dscale, 0.0)
    elif DROP == DROP_NEURON:
        scale = scale * dscale
        shift = shift * dscale
    return scale, shift, keep


@triton.jit
def _neuron_keep(seed_ptr, index, threshold):
    """Drop-neuron keep decision of the elements at logical indices ``index`` (int64)."""
    w0, w1, w2, w3 = philox_words(tl.load(seed_ptr), index >> 3, STREAM_NEURON)
    return select_half_word(w0, w1, w2, w3, (index & 7).to(tl.int32)) < threshold


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
    scale_ptr,  # (1 or N, C) fp32 weight * invstd
    shift_ptr,  # (1 or N, C) fp32 bias - mean * weight * invstd
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S,
    x_sn, x_sc, x_ss,
    out_sn, out_sc, out_ss,
    table_sn,  # row stride of the tables: 0 (per channel) or C (per sample and channel)
    num_s_blocks,
    num_c_blocks,
    threshold,  # keep rule of the dropout level (16-bit neuron or 32-bit unit threshold)
    dscale,  # fp32 1 / (1 - p) (1 without dropout)
    ACT: tl.constexpr,
    DROP: tl.constexpr,  # 0 none, 1 neuron, 2 channel
    S_UNIT_STRIDE: tl.constexpr,  # x_ss == out_ss == 1 (NCHW)
    C_UNIT_STRIDE: tl.constexpr,  # x_sc == out_sc == 1 (channels_last)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, s, nc_in_bounds = _tile(N, C, S, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
    in_bounds = nc_in_bounds & (s < S)
    scale, shift, keep = _folded_affine(scale_ptr, shift_ptr, seed_ptr, n, c, C, table_sn, nc_in_bounds, threshold,
                                        dscale, DROP)
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
    if DROP == DROP_NEURON:
        z = tl.where(_neuron_keep(seed_ptr, (n * C + c) * S + s, threshold), z, 0.0)
    tl.store(out_ptr + n * out_sn + c * out_sc + s * out_ss, z.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _grad_at_affine(x, dy, scale, shift, keep, seed_ptr, index, threshold, dscale, ACT: tl.constexpr,
                    DROP: tl.constexpr):
    """Gradient at the affine output: the incoming gradient through dropout and ReLU (masks recomputed)."""
    dz = tl.where(keep, dy * dscale, 0.0)
    if DROP == DROP_NEURON:
        dz = tl.where(_neuron_keep(seed_ptr, index, threshold), dz, 0.0)
    if ACT:
        dz = tl.where(x * scale + shift > 0.0, dz, 0.0)
    return dz


@triton.jit
def _norm_act_drop_bwd_sums_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    sum_dz_ptr,  # (N, C, K) fp32 output: sum of dz over each chunk of positions
    sum_dz_xhat_ptr,  # (N, C, K) fp32 output: sum of dz * xhat over each chunk
    scale_ptr,  # (1 or N, C) fp32 weight * invstd
    shift_ptr,  # (1 or N, C) fp32 bias - mean * weight * invstd
    mean_ptr,  # (1 or N, C) fp32 mean
    invstd_ptr,  # (1 or N, C) fp32 1 / sqrt(var + eps)
    seed_ptr,  # () int64 seed (read only with dropout)
    C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    table_sn,
    num_c_blocks,
    num_chunks,
    chunk,  # positions per chunk, a multiple of BLOCK_S
    blocks_per_chunk,  # chunk // BLOCK_S (blocks past S are masked out)
    threshold,
    dscale,
    ACT: tl.constexpr,
    DROP: tl.constexpr,
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
    scale, shift, keep = _folded_affine(scale_ptr, shift_ptr, seed_ptr, n, c, C, table_sn, c_in_bounds, threshold,
                                        dscale, DROP)
    mean = tl.load(mean_ptr + n * table_sn + c, mask=c_in_bounds, other=0.0)
    invstd = tl.load(invstd_ptr + n * table_sn + c, mask=c_in_bounds, other=0.0)
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
        dz = _grad_at_affine(x, dy, scale, shift, keep, seed_ptr, (n * C + c) * S + s, threshold, dscale, ACT, DROP)
        dz = tl.where(in_bounds, dz, 0.0)
        acc_dz += dz
        acc_dz_xhat += dz * ((x - mean) * invstd)
        i += 1
    out = (n * C + channels) * num_chunks + k
    tl.store(sum_dz_ptr + out, tl.sum(acc_dz, axis=1), mask=channels < C)
    tl.store(sum_dz_xhat_ptr + out, tl.sum(acc_dz_xhat, axis=1), mask=channels < C)


@triton.jit
def _norm_act_drop_bwd_dx_kernel(
    x_ptr,  # (N, C, S) strided input of the forward pass
    dy_ptr,  # (N, C, S) strided gradient of the output
    dx_ptr,  # (N, C, S) strided output: gradient of the input
    scale_ptr,  # (1 or N, C) fp32 weight * invstd
    shift_ptr,  # (1 or N, C) fp32 bias - mean * weight * invstd
    mean_ptr,  # (1 or N, C) fp32 mean
    invstd_ptr,  # (1 or N, C) fp32 1 / sqrt(var + eps)
    k2_ptr,  # (1 or N, C) fp32 coefficient of xhat (read only when COUPLED)
    k3_ptr,  # (1 or N, C) fp32 constant term (read only when COUPLED)
    seed_ptr,  # () int64 seed (read only with dropout)
    N, C, S,
    x_sn, x_sc, x_ss,
    dy_sn, dy_sc, dy_ss,
    dx_sn, dx_sc, dx_ss,
    table_sn,
    num_s_blocks,
    num_c_blocks,
    threshold,
    dscale,
    ACT: tl.constexpr,
    DROP: tl.constexpr,
    COUPLED: tl.constexpr,  # the statistics depend on x (batch statistics, GroupNorm): dx = k1 dz + k2 xhat + k3
    S_UNIT_STRIDE: tl.constexpr,
    C_UNIT_STRIDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n, c, s, nc_in_bounds = _tile(N, C, S, num_s_blocks, num_c_blocks, BLOCK_N, BLOCK_C, BLOCK_S)
    in_bounds = nc_in_bounds & (s < S)
    scale, shift, keep = _folded_affine(scale_ptr, shift_ptr, seed_ptr, n, c, C, table_sn, nc_in_bounds, threshold,
                                        dscale, DROP)
    table = n * table_sn + c
    k1 = tl.load(scale_ptr + table, mask=nc_in_bounds, other=0.0)  # weight * invstd
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
    dz = _grad_at_affine(x, dy, scale, shift, keep, seed_ptr, (n * C + c) * S + s, threshold, dscale, ACT, DROP)
    dx = k1 * dz
    if COUPLED:
        mean = tl.load(mean_ptr + table, mask=nc_in_bounds, other=0.0)
        invstd = tl.load(invstd_ptr + table, mask=nc_in_bounds, other=0.0)
        k2 = tl.load(k2_ptr + table, mask=nc_in_bounds, other=0.0)
        k3 = tl.load(k3_ptr + table, mask=nc_in_bounds, other=0.0)
        dx = dx + k2 * ((x - mean) * invstd) + k3
    tl.store(dx_ptr + n * dx_sn + c * dx_sc + s * dx_ss, dx.to(dx_ptr.dtype.element_ty), mask=in_bounds)


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_strides(*views: torch.Tensor):
    """``(S_UNIT_STRIDE, C_UNIT_STRIDE)`` when every view shares the layout kind."""
    S = views[0].shape[2]
    s_unit = S > 1 and all(v.stride(2) == 1 for v in views)
    c_unit = all(v.stride(1) == 1 for v in views) and not s_unit
    return s_unit, c_unit


def _elementwise_blocks(N: int, C: int, S: int, c_unit: bool):
    """(N, C, S) tile of the elementwise passes (as the unit-gate kernel's)."""
    if c_unit:
        block_c = min(64, triton.next_power_of_2(C))
        block_s = max(1, min(triton.next_power_of_2(S), 8192 // block_c))
    else:
        block_s = min(1024, triton.next_power_of_2(S))
        block_c = max(1, min(triton.next_power_of_2(C), 2048 // block_s))
    block_n = max(1, min(triton.next_power_of_2(N), (8192 if c_unit else 2048) // (block_c * block_s)))
    return block_n, block_c, block_s


def _drop_args(seed, p: float, drop: int, fallback_ptr: torch.Tensor):
    """``(seed pointer, threshold, dscale)``: a dummy pointer and no-op values without dropout."""
    if drop == 0:
        return fallback_ptr, 0, 1.0
    threshold = neuron_threshold(p) if drop == 1 else unit_threshold(p)
    return seed, threshold, keep_scale(p)


def _tables(tables):
    """A preparer of the (1, C) or (N, C) fp32 tables (contiguous) and their row stride (0 when per channel)."""
    C = tables.mean.shape[1]
    table_sn = C if tables.mean.shape[0] > 1 else 0

    def prepare(t):
        return t.to(torch.float32).expand(tables.mean.shape).contiguous()

    return prepare, table_sn


def norm_act_drop_fwd_triton(x: torch.Tensor, tables, seed, p: float, act: bool, drop: int) -> torch.Tensor:
    """``drop(relu(x * scale + shift))``; the output keeps x's layout (channels_last stays channels_last)."""
    out = empty_dense_like(x)
    src, dst = as_ncs(x), as_ncs(out)
    N, C, S = src.shape
    prepare, table_sn = _tables(tables)
    scale, shift = prepare(tables.scale), prepare(tables.shift)
    seed_ptr, threshold, dscale = _drop_args(seed, p, drop, scale)
    s_unit, c_unit = _unit_strides(src, dst)
    block_n, block_c, block_s = _elementwise_blocks(N, C, S, c_unit)
    num_s_blocks, num_c_blocks = triton.cdiv(S, block_s), triton.cdiv(C, block_c)
    grid = (triton.cdiv(N, block_n) * num_c_blocks * num_s_blocks,)
    _norm_act_drop_fwd_kernel[grid](
        src, dst, scale, shift, seed_ptr, N, C, S, *_strides(src), *_strides(dst), table_sn,
        num_s_blocks, num_c_blocks, threshold, dscale,
        ACT=act, DROP=drop, S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4,
    )
    return out


def _grad_view(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The incoming gradient in x's layout kind (one copy only when they differ)."""
    if grad.stride() == x.stride():
        return grad
    out = empty_dense(grad.shape, is_channels_minor(x), grad.dtype, grad.device)
    out.copy_(grad)
    return out


def norm_act_drop_bwd_sums_triton(grad: torch.Tensor, x: torch.Tensor, tables, seed, p: float, act: bool, drop: int):
    """Per-(sample, channel) sums of ``dz`` and ``dz * xhat``, each (N, C) fp32."""
    src, dy = as_ncs(x), as_ncs(_grad_view(grad, x))
    N, C, S = src.shape
    prepare, table_sn = _tables(tables)
    scale, shift = prepare(tables.scale), prepare(tables.shift)
    mean, invstd = prepare(tables.mean), prepare(tables.invstd)
    seed_ptr, threshold, dscale = _drop_args(seed, p, drop, scale)
    s_unit, c_unit = _unit_strides(src, dy)
    block_c, block_s, chunk = stats_blocks(N, C, S, c_unit)
    num_chunks, num_c_blocks = triton.cdiv(S, chunk), triton.cdiv(C, block_c)
    sum_dz = torch.empty((N, C, num_chunks), dtype=torch.float32, device=x.device)
    sum_dz_xhat = torch.empty_like(sum_dz)
    grid = (N * num_c_blocks * num_chunks,)
    _norm_act_drop_bwd_sums_kernel[grid](
        src, dy, sum_dz, sum_dz_xhat, scale, shift, mean, invstd, seed_ptr, C, S, *_strides(src), *_strides(dy),
        table_sn, num_c_blocks, num_chunks, chunk, chunk // block_s, threshold, dscale,
        ACT=act, DROP=drop, S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=4,
    )
    return sum_dz.sum(2), sum_dz_xhat.sum(2)


def norm_act_drop_bwd_dx_triton(grad: torch.Tensor, x: torch.Tensor, tables, k2, k3, seed, p: float, act: bool,
                                drop: int) -> torch.Tensor:
    """``dx = scale * dz + k2 * xhat + k3`` (``k2``/``k3`` None when the statistics do not depend on x)."""
    dx = empty_dense_like(x)
    src, dy, dst = as_ncs(x), as_ncs(_grad_view(grad, x)), as_ncs(dx)
    N, C, S = src.shape
    prepare, table_sn = _tables(tables)
    scale, shift = prepare(tables.scale), prepare(tables.shift)
    mean, invstd = prepare(tables.mean), prepare(tables.invstd)
    coupled = k2 is not None
    k2, k3 = (prepare(k2), prepare(k3)) if coupled else (scale, scale)
    seed_ptr, threshold, dscale = _drop_args(seed, p, drop, scale)
    s_unit, c_unit = _unit_strides(src, dy, dst)
    block_n, block_c, block_s = _elementwise_blocks(N, C, S, c_unit)
    num_s_blocks, num_c_blocks = triton.cdiv(S, block_s), triton.cdiv(C, block_c)
    grid = (triton.cdiv(N, block_n) * num_c_blocks * num_s_blocks,)
    _norm_act_drop_bwd_dx_kernel[grid](
        src, dy, dst, scale, shift, mean, invstd, k2, k3, seed_ptr, N, C, S, *_strides(src), *_strides(dy),
        *_strides(dst), table_sn, num_s_blocks, num_c_blocks, threshold, dscale,
        ACT=act, DROP=drop, COUPLED=coupled, S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4,
    )
    return dx
