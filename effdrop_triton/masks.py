"""Philox4x32-10 in plain NumPy / PyTorch integer arithmetic, and the keep rules of every level.

This is the fallback's random number generator and the documented definition of a
mask; the Triton kernels call ``tl.philox`` with the same counter words and must agree
bit for bit.

Counter layout (four 32-bit words) for gated unit ``i`` (an int64 index)::

    (i & 0xFFFFFFFF, i >> 32, stream, 0), key = (seed & 0xFFFFFFFF, seed >> 32)

``stream`` is the level's number (``levels.DropLevel``: 0 neuron, 1 channel, 2 path,
3 layer), so the four levels never share random numbers for the same seed.

Keep rules:

* drop-neuron: element ``i`` (the row-major index in the tensor's logical shape,
  whatever its memory layout) uses Philox call ``g = i // 8``; its 16-bit number is
  half ``i % 2`` (0 = low bits) of output word ``(i % 8) // 2``. The element is kept
  when that number is below ``round((1 - p) * 2**16)``. So one call decides one byte
  of elements: bit ``j`` of the packed mask's byte ``g`` is the keep bit of element ``8g + j``.
* drop-channel / drop-path / drop-layer: unit ``u`` uses output word 0 of Philox call
  ``u`` and is kept when it is below ``round((1 - p) * 2**32)``. Units are
  ``n * C + c`` (channel), ``n * P + path`` or ``path`` (path, sample / batch mode),
  ``n`` or ``0`` (layer, sample / batch mode).

Kept values are multiplied by the fp32 scale ``1 / (1 - p)`` (0 when ``p == 1``); the values of a
dropped unit are written as +0.0 (never ``0 * x``, which is NaN for non-finite and -0.0 for
negative ``x``).

On the CPU the rounds run on Python ints with one counter per 64-bit lane (a unit table's few
hundred counters) or in NumPy on uint64 words (a NumPy operation costs a fraction of a PyTorch
one, and its products of 32-bit words never overflow), elsewhere in PyTorch int64, whose
products wrap like unsigned 64-bit ones: the low half is ``prod & MASK`` and the high half
``(prod >> 32) & MASK``.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch

from .levels import DropLevel

MASK32 = 0xFFFFFFFF
ROUND_A = 0xD2511F53
ROUND_B = 0xCD9E8D57
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
N_ROUNDS = 10

NEURON_BITS = 16
UNIT_BITS = 32

# Philox calls per chunk of the neuron mask: on the CPU, keeps the round's work buffers in the L2 cache;
# on a GPU (the fallback there), bounds the int64 work buffers while keeping the launches few.
_NEURON_CHUNK_CALLS = 1 << 14
_DEVICE_CHUNK_CALLS = 1 << 17


def neuron_threshold(p: float) -> int:
    """Integer threshold of the 16-bit keep rule."""
    return int(round((1.0 - p) * (1 << NEURON_BITS)))


def unit_threshold(p: float) -> int:
    """Integer threshold of the 32-bit keep rule."""
    return int(round((1.0 - p) * (1 << UNIT_BITS)))


def keep_scale(p: float) -> float:
    """Scale applied to kept values (inverted dropout)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def seed_key(seed: torch.Tensor):
    """The two 32-bit key words of a 0-d int64 seed tensor (Python ints on CPU)."""
    if seed.device.type == "cpu":
        value = int(seed)
        return value & MASK32, (value >> 32) & MASK32
    return seed & MASK32, (seed >> 32) & MASK32


def philox4x32(c0, c1, c2, c3, k0, k1, n_rounds: int = N_ROUNDS, lanes: Optional[int] = None):
    """Philox4x32 on 32-bit words: uint64 NumPy arrays, int64 tensors or, with ``lanes``, Python ints.

    Returns the four output words, each in ``[0, 2**32)``. With ``lanes`` (an int with a 1 in each of
    its 64-bit lanes) every word is a Python int holding one counter's word per lane: a product of two
    32-bit words fits its lane, so each operation serves every counter at once, at a fraction of an
    array operation's fixed cost (a few hundred counters: a unit table).
    """
    if isinstance(c0, np.ndarray):
        return _philox4x32_numpy(c0, c1, c2, c3, k0, k1, n_rounds)
    low, k_lanes = (MASK32, 1) if lanes is None else (lanes * MASK32, lanes)
    for _ in range(n_rounds):
        prod0, prod1 = c0 * ROUND_A, c2 * ROUND_B
        c0, c1, c2, c3 = (((prod1 >> 32) & low) ^ c1 ^ (k0 * k_lanes), prod1 & low,
                          ((prod0 >> 32) & low) ^ c3 ^ (k1 * k_lanes), prod0 & low)
        k0, k1 = (k0 + KEY_A) & MASK32, (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


# a round's constants for stacked word pairs: (c0, c2) times (A, B); the keys (k0, k1) of every round
_ROUND_FACTOR = np.array((ROUND_A, ROUND_B), np.uint64).reshape(2, 1)
_KEY_STEPS = np.arange(N_ROUNDS, dtype=np.uint64).reshape(-1, 1, 1) * np.array((KEY_A, KEY_B), np.uint64).reshape(2, 1)


def _philox4x32_numpy(c0, c1, c2, c3, k0, k1, n_rounds: int):
    """The same rounds on NumPy arrays, in place: the words a round multiplies (c0, c2) and the ones it passes
    on (c1, c3) are stacked, so a round is five array operations into fixed buffers (no temporaries)."""
    even, odd = np.stack((c0, c2)), np.stack((c1, c3))
    keys = (np.array((k0, k1), np.uint64).reshape(2, 1) + _KEY_STEPS[:n_rounds]) & MASK32
    prod, high = np.empty_like(even), np.empty_like(even)
    for key in keys:
        np.multiply(even, _ROUND_FACTOR, out=prod)  # (A * c0, B * c2)
        np.right_shift(prod, 32, out=high)
        # new (c0, c2) = (hi(B * c2) ^ c1 ^ k0, hi(A * c0) ^ c3 ^ k1)
        np.bitwise_xor(high[::-1], odd, out=even)
        even ^= key
        # new (c1, c3) = (lo(B * c2), lo(A * c0))
        np.bitwise_and(prod[::-1], MASK32, out=odd)
    return even[0], odd[0], even[1], odd[1]


# Up to this many counters, Philox runs on Python ints with 64-bit lanes (see philox4x32).
_LANES_MAX_CALLS = 256


def _to_lanes(words: np.ndarray) -> int:
    return int.from_bytes(words.tobytes(), "little")


@functools.lru_cache(maxsize=64)
def _ones_in_lanes(n: int) -> int:
    """The ``lanes`` argument of ``philox4x32`` for ``n`` counters: a 1 in each 64-bit lane."""
    return _to_lanes(np.ones(n, np.uint64))


def _from_lanes(value: int, n: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(8 * n, "little"), np.uint64)


def _words(counter, seed: torch.Tensor, level: int, n_words: int = 4):
    """The first ``n_words`` output words for int64 ``counter`` indices (a 1-d NumPy array on the CPU, else a
    tensor), as uint64 arrays or int64 tensors."""
    k0, k1 = seed_key(seed)
    if isinstance(counter, np.ndarray):
        counter = counter.astype(np.uint64)  # the same bits: the counter's words
        n = counter.size
        if n <= _LANES_MAX_CALLS:
            lanes = _ones_in_lanes(n)
            words = philox4x32(_to_lanes(counter & MASK32), _to_lanes(counter >> 32), int(level) * lanes, 0, k0, k1,
                               lanes=lanes)
            return tuple(_from_lanes(w, n) for w in words[:n_words])
        zero = np.zeros_like(counter)
        return philox4x32(counter & MASK32, counter >> 32, zero + int(level), zero, k0, k1)
    zero = torch.zeros_like(counter)
    return philox4x32(counter & MASK32, counter >> 32, zero + int(level), zero, k0, k1)


def philox_words(counter: torch.Tensor, seed: torch.Tensor, level: int):
    """The four output words (int64 tensors) for int64 ``counter`` indices under the documented layout."""
    if counter.device.type == "cpu":
        words = _words(counter.reshape(-1).numpy(), seed, level)
        return tuple(torch.from_numpy(w.astype(np.int64)).view(counter.shape) for w in words)
    return tuple(w.view(counter.shape) for w in _words(counter.reshape(-1), seed, level))


def unit_keep(units: torch.Tensor, seed: torch.Tensor, level: int, p: float) -> torch.Tensor:
    """Boolean keep decision for each int64 unit index in ``units``."""
    if units.device.type == "cpu":
        word0 = _words(units.reshape(-1).numpy(), seed, level, n_words=1)[0]
        return torch.from_numpy(word0 < unit_threshold(p)).view(units.shape)
    return philox_words(units, seed, level)[0] < unit_threshold(p)


def neuron_keep_bits(numel: int, seed: torch.Tensor, p: float) -> torch.Tensor:
    """The packed keep mask of ``numel`` elements on the CPU: ``ceil(numel / 8)`` uint8, bit ``j`` of
    byte ``g`` the keep bit of element ``8g + j`` (one Philox call per byte)."""
    threshold = neuron_threshold(p)
    threshold = np.uint16(threshold) if threshold < 1 << NEURON_BITS else None  # None: 2**16, every element kept
    calls = (numel + 7) // 8
    bits = np.empty(calls, np.uint8)
    # a call's four words side by side as uint32: viewed as uint16, its eight halves in element order
    words = np.empty((min(calls, _NEURON_CHUNK_CALLS), 4), np.uint32)
    for start in range(0, calls, _NEURON_CHUNK_CALLS):
        stop = min(calls, start + _NEURON_CHUNK_CALLS)
        n = stop - start
        for w, word in enumerate(_words(np.arange(start, stop), seed, DropLevel.NEURON)):
            words[:n, w] = word
        halves = words[:n].view(np.uint16).reshape(-1)
        keep = np.less(halves, threshold) if threshold is not None else np.ones(halves.shape, np.bool_)
        bits[start:stop] = np.packbits(keep, bitorder="little")
    return torch.from_numpy(bits)


def dropped_from_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Flat boolean mask of the dropped elements from a packed keep mask (``neuron_keep_bits``)."""
    dropped = np.unpackbits(np.invert(bits.numpy()), count=numel, bitorder="little")
    return torch.from_numpy(dropped.view(np.bool_))


# byte -> the eight elements' bit masks (all ones: kept, zeros: dropped), per element size
_LANE_MASKS = {size: -np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(kind)
               for size, kind in ((2, np.int16), (4, np.int32), (8, np.int64))}
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


# Elements per block of the packed-mask gate: the block's mask stays in cache between its two passes.
_GATE_BLOCK = 1 << 16


def zero_dropped_elements(dst: torch.Tensor, bits: torch.Tensor) -> None:
    """Write +0.0 into the elements of a CPU tensor (logical row-major order, any layout) whose keep
    bit in ``bits`` is clear, by and-ing their bits with zero: exact for any value."""
    masks = np.take(_LANE_MASKS[dst.element_size()], bits.numpy(), axis=0).reshape(-1)[:dst.numel()]
    dst.view(_INT_OF_SIZE[dst.element_size()]).bitwise_and_(torch.from_numpy(masks).view(dst.shape))


def gate_elements(src: torch.Tensor, dst: torch.Tensor, bits: torch.Tensor, scale: float) -> None:
    """``dst = src * scale`` with +0.0 where the packed keep mask ``bits`` has a clear bit (CPU). Contiguous
    tensors go in blocks whose lane masks stay in cache between the multiply and the and."""
    if not (src.is_contiguous() and dst.is_contiguous()):
        torch.mul(src, scale, out=dst)
        zero_dropped_elements(dst, bits)
        return
    table = _LANE_MASKS[dst.element_size()]
    flat_src, flat_dst, packed = src.view(-1), dst.view(-1), bits.numpy()
    dst_bits = host_bits(flat_dst)
    for start in range(0, src.numel(), _GATE_BLOCK):  # a multiple of 8: a block starts on a byte
        stop = min(start + _GATE_BLOCK, src.numel())
        torch.mul(flat_src[start:stop], scale, out=flat_dst[start:stop])
        lane_masks = np.take(table, packed[start // 8:(stop + 7) // 8], axis=0).reshape(-1)[:stop - start]
        np.bitwise_and(dst_bits[start:stop], lane_masks, out=dst_bits[start:stop])


def neuron_keep(numel: int, seed: torch.Tensor, p: float, device=None) -> torch.Tensor:
    """Flat boolean keep mask of ``numel`` elements, in logical row-major order."""
    device = seed.device if device is None else torch.device(device)
    if device.type == "cpu":
        return dropped_from_bits(neuron_keep_bits(numel, seed.cpu(), p), numel).logical_not_()
    seed = seed.to(device)
    threshold = neuron_threshold(p)
    calls = (numel + 7) // 8
    keep = torch.empty(calls * 8, dtype=torch.bool, device=device)
    for start in range(0, calls, _DEVICE_CHUNK_CALLS):
        stop = min(calls, start + _DEVICE_CHUNK_CALLS)
        counter = torch.arange(start, stop, dtype=torch.int64, device=device)
        words = torch.stack(philox_words(counter, seed, DropLevel.NEURON), dim=1)
        # element 8g + 2w + h takes half h of word w
        out = keep[start * 8 : stop * 8].view(-1, 4, 2)
        torch.lt(words & 0xFFFF, threshold, out=out[:, :, 0])
        torch.lt(words >> 16, threshold, out=out[:, :, 1])
    return keep[:numel]


def neuron_dropped(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the elements drop-neuron drops, in ``x``'s logical shape."""
    if x.device.type == "cpu":
        return dropped_from_bits(neuron_keep_bits(x.numel(), seed, p), x.numel()).view(x.shape)
    return neuron_keep(x.numel(), seed, p, x.device).view(x.shape).logical_not_()


def unit_keep_table(N: int, C: int, seed: torch.Tensor, p: float, *, level: int, per_sample: bool,
                    units_per_sample: int, unit_base: int = 0, channels_per_unit: int = 1,
                    device=None) -> torch.Tensor:
    """(N, C) boolean keep decision of every (sample, channel) of a gated level, by the unit rule: the
    unit of (n, c) is ``n * units_per_sample`` (per-sample mode only) ``+ unit_base + c // channels_per_unit``.

    One Philox call per distinct unit; channels of one unit share its decision. On the CPU the whole
    table is one vectorized pass (``philox4x32`` on lanes of Python ints, or NumPy for many units).
    """
    device = seed.device if device is None else torch.device(device)
    xp = np if device.type == "cpu" else torch
    units = unit_base + xp.arange(-(-C // channels_per_unit))
    if per_sample:
        units = xp.arange(N)[:, None] * units_per_sample + units
    units = torch.from_numpy(units) if xp is np else units.to(device)
    keep = unit_keep(units, seed.to(device), level, p).view(-1 if per_sample else 1, units.shape[-1])
    if channels_per_unit > 1:
        keep = keep.repeat_interleave(channels_per_unit, dim=1)[:, :C]
    return keep.expand(N, C)


def gate_factor(keep: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """Per-unit multiplier ``keep / (1 - p)`` in the compute dtype (fp32, fp64 for fp64)."""
    if keep.device.type == "cpu":  # NumPy: the dispatch of two small PyTorch operations costs more
        kind = np.float64 if dtype == torch.float64 else np.float32
        return torch.from_numpy(np.where(keep.numpy(), kind(keep_scale(p)), kind(0)))
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return keep.to(compute_dtype).mul_(keep_scale(p))


def host_bits(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a NumPy array of same-size integers (its strides kept; any float dtype,
    bf16 too): NumPy's indexed assignment writes rows at memset speed, several times PyTorch's."""
    return t.view(_INT_OF_SIZE[t.element_size()]).numpy()


def zero_dropped(dst: torch.Tensor, keep: torch.Tensor) -> None:
    """Write +0.0 into the dropped (n, c) rows of an (N, C, S) view, as the kernels do."""
    if dst.device.type != "cpu":  # no device sync: one pass over everything
        dst.masked_fill_(~keep[:, :, None], 0)
        return
    # the CPU touches only the dropped rows, as whole rows where they follow one another in memory
    dropped = ~keep.numpy()
    N, C, S = dst.shape
    if dst.stride(0) == C * dst.stride(1) and dst.stride(1) == S * dst.stride(2):
        host_bits(dst).reshape(N * C, S)[np.flatnonzero(dropped)] = 0
    else:
        host_bits(dst)[np.nonzero(dropped)] = 0


def unit_gate_torch(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, **rule) -> None:
    """The gate of a unit level in PyTorch: ``dst = src * keep / (1 - p)`` for (N, C, S) views, ``rule``
    as :func:`unit_keep_table`'s keywords (the fallback of the unit-gate kernel)."""
    N, C, _ = src.shape
    keep = unit_keep_table(N, C, seed, p, device=src.device, **rule)
    torch.mul(src, gate_factor(keep, p, src.dtype)[:, :, None], out=dst)
    zero_dropped(dst, keep)
