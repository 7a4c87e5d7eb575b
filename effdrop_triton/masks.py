"""Philox4x32-10 in plain PyTorch integer arithmetic, and the keep rules of every level.

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
  when that number is below ``round((1 - p) * 2**16)``.
* drop-channel / drop-path / drop-layer: unit ``u`` uses output word 0 of Philox call
  ``u`` and is kept when it is below ``round((1 - p) * 2**32)``. Units are
  ``n * C + c`` (channel), ``n * P + path`` or ``path`` (path, sample / batch mode),
  ``n`` or ``0`` (layer, sample / batch mode).

Kept values are multiplied by the fp32 scale ``1 / (1 - p)`` (0 when ``p == 1``); the values of a
dropped unit are written as +0.0 (never ``0 * x``, which is NaN for non-finite and -0.0 for
negative ``x``).

Products of two 32-bit words are formed in int64: they wrap like unsigned 64-bit
products, so the low half is ``prod & MASK`` and the high half ``(prod >> 32) & MASK``.
"""

from __future__ import annotations

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

# Philox calls per chunk of the neuron mask: keeps the int64 work buffers in cache.
_NEURON_CHUNK_CALLS = 1 << 17
# Below this many Philox calls on the CPU, NumPy runs the rounds (less overhead per operation).
_NUMPY_MAX_CALLS = 1 << 14


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


def philox4x32(c0, c1, c2, c3, k0, k1, n_rounds: int = N_ROUNDS):
    """Philox4x32 on int64 tensors (or uint64 NumPy arrays) holding 32-bit words; overwrites its inputs.

    Returns the four output words, each in ``[0, 2**32)``.
    """
    xp = np if isinstance(c0, np.ndarray) else torch
    signed = xp is torch  # int64 right shifts are arithmetic: mask the high half
    prod0 = xp.empty_like(c0)
    prod1 = xp.empty_like(c0)
    high = xp.empty_like(c0)
    for _ in range(n_rounds):
        xp.multiply(c0, ROUND_A, out=prod0)
        xp.multiply(c2, ROUND_B, out=prod1)
        # new c0 = hi(B * c2) ^ c1 ^ k0, built in c1's buffer
        xp.bitwise_right_shift(prod1, 32, out=high)
        if signed:
            high &= MASK32
        c1 ^= high
        c1 ^= k0
        # new c2 = hi(A * c0) ^ c3 ^ k1, built in c3's buffer
        xp.bitwise_right_shift(prod0, 32, out=high)
        if signed:
            high &= MASK32
        c3 ^= high
        c3 ^= k1
        # new c1 = lo(B * c2), new c3 = lo(A * c0)
        xp.bitwise_and(prod1, MASK32, out=c0)
        xp.bitwise_and(prod0, MASK32, out=c2)
        c0, c1, c2, c3 = c1, c0, c3, c2
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def philox_words(counter: torch.Tensor, seed: torch.Tensor, level: int):
    """The four output words (int64 tensors) for int64 ``counter`` indices under the documented layout."""
    k0, k1 = seed_key(seed)
    stream = int(level)  # the counter's stream word; NumPy takes no int subclass beside uint64 words
    shape = counter.shape
    counter = counter.reshape(-1)
    if counter.device.type == "cpu" and counter.numel() <= _NUMPY_MAX_CALLS:
        # few calls: NumPy's lower per-operation overhead wins (same rounds, uint64 words)
        counter = counter.numpy().astype(np.uint64)
        zero = np.zeros_like(counter)
        words = philox4x32(counter & MASK32, counter >> np.uint64(32), zero + stream, zero, k0, k1)
        return tuple(torch.from_numpy(w.astype(np.int64)).view(shape) for w in words)
    zero = torch.zeros_like(counter)
    words = philox4x32(counter & MASK32, counter >> 32, zero + stream, zero, k0, k1)
    return tuple(w.view(shape) for w in words)


def unit_keep(units: torch.Tensor, seed: torch.Tensor, level: int, p: float) -> torch.Tensor:
    """Boolean keep decision for each int64 unit index in ``units``."""
    word0 = philox_words(units, seed, level)[0]
    return word0 < unit_threshold(p)


def neuron_keep(numel: int, seed: torch.Tensor, p: float, device=None) -> torch.Tensor:
    """Flat boolean keep mask of ``numel`` elements, in logical row-major order."""
    device = seed.device if device is None else device
    seed = seed.to(device)
    threshold = neuron_threshold(p)
    calls = (numel + 7) // 8
    keep = torch.empty(calls * 8, dtype=torch.bool, device=device)
    for start in range(0, calls, _NEURON_CHUNK_CALLS):
        stop = min(calls, start + _NEURON_CHUNK_CALLS)
        counter = torch.arange(start, stop, dtype=torch.int64, device=device)
        words = torch.stack(philox_words(counter, seed, DropLevel.NEURON), dim=1)
        # element 8g + 2w + h takes half h of word w
        out = keep[start * 8 : stop * 8].view(-1, 4, 2)
        torch.lt(words & 0xFFFF, threshold, out=out[:, :, 0])
        torch.lt(words >> 16, threshold, out=out[:, :, 1])
    return keep[:numel]


def neuron_dropped(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the elements drop-neuron drops, in ``x``'s logical shape."""
    return neuron_keep(x.numel(), seed, p, x.device).view(x.shape).logical_not_()


def unit_keep_table(N: int, C: int, seed: torch.Tensor, p: float, *, level: int, per_sample: bool,
                    units_per_sample: int, unit_base: int = 0, channels_per_unit: int = 1,
                    device=None) -> torch.Tensor:
    """(N, C) boolean keep decision of every (sample, channel) of a gated level, by the unit rule: the
    unit of (n, c) is ``n * units_per_sample`` (per-sample mode only) ``+ unit_base + c // channels_per_unit``.

    One Philox call per distinct unit; channels of one unit share its decision.
    """
    device = seed.device if device is None else device
    units = unit_base + torch.arange(-(-C // channels_per_unit), dtype=torch.int64, device=device)
    if per_sample:
        units = torch.arange(N, dtype=torch.int64, device=device)[:, None] * units_per_sample + units
    keep = unit_keep(units, seed.to(device), level, p).view(-1 if per_sample else 1, units.shape[-1])
    if channels_per_unit > 1:
        keep = keep.repeat_interleave(channels_per_unit, dim=1)[:, :C]
    return keep.expand(N, C)


def gate_factor(keep: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """Per-unit multiplier ``keep / (1 - p)`` in the compute dtype (fp32, fp64 for fp64)."""
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return keep.to(compute_dtype).mul_(keep_scale(p))


def zero_dropped(dst: torch.Tensor, keep: torch.Tensor) -> None:
    """Write +0.0 into the dropped (n, c) rows of an (N, C, S) view, as the kernels do."""
    dropped = ~keep
    if dst.device.type == "cpu":  # touch only the dropped rows (no device sync on the CPU)
        n, c = dropped.nonzero(as_tuple=True)
        dst[n, c] = 0
    else:
        dst.masked_fill_(dropped[:, :, None], 0)


def unit_gate_torch(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, **rule) -> None:
    """The gate of a unit level in PyTorch: ``dst = src * keep / (1 - p)`` for (N, C, S) views, ``rule``
    as :func:`unit_keep_table`'s keywords (the fallback of the unit-gate kernel)."""
    N, C, _ = src.shape
    keep = unit_keep_table(N, C, seed, p, device=src.device, **rule)
    torch.mul(src, gate_factor(keep, p, src.dtype)[:, :, None], out=dst)
    zero_dropped(dst, keep)
