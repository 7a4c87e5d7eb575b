"""Triton side of the counter layout documented in ``effdrop_triton.masks``.

``tl.philox`` is called with explicit 32-bit counter words (never ``tl.rand`` on
int64 offsets, whose meaning changed between Triton releases).
"""

import triton
import triton.language as tl

from effdrop_triton.levels import DropLevel


@triton.jit
def philox_words(seed, counter, stream: tl.constexpr):
    """Four uint32 Philox outputs for int64 ``counter`` (any shape) on a level's stream."""
    lo = (counter & 0xFFFFFFFF).to(tl.uint32)
    hi = (counter >> 32).to(tl.uint32)
    zero = lo * 0
    return tl.philox(seed, lo, hi, zero + stream, zero)


@triton.jit
def unit_keep(seed, unit, stream: tl.constexpr, threshold):
    """Keep decision of gated units: word 0 below the 32-bit threshold (an int64)."""
    word0, _, _, _ = philox_words(seed, unit, stream)
    return word0.to(tl.int64) < threshold


@triton.jit
def select_half_word(w0, w1, w2, w3, lane):
    """The 16-bit number of ``lane`` (0..7): half ``lane % 2`` of word ``lane // 2``."""
    word = tl.where(lane < 4, tl.where(lane < 2, w0, w1), tl.where(lane < 6, w2, w3))
    shift = ((lane & 1) * 16).to(tl.uint32)
    return ((word >> shift) & 0xFFFF).to(tl.int32)


# the level streams as compile-time constants for the kernels
STREAM_NEURON = tl.constexpr(int(DropLevel.NEURON))
STREAM_CHANNEL = tl.constexpr(int(DropLevel.CHANNEL))
STREAM_PATH = tl.constexpr(int(DropLevel.PATH))
STREAM_LAYER = tl.constexpr(int(DropLevel.LAYER))
