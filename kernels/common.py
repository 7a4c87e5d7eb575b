"""What the kernels share: the launch, the levels as constexprs, Philox words and drop-neuron's groups of 8,
and the tiles (program-id split, block sizes, unit strides) with their launch arithmetic.

Launch arithmetic is plain Python: ``triton.cdiv`` and ``triton.next_power_of_2`` are ``@triton.jit``
functions in recent Triton releases; called from Python they cost about 2 µs each, and a launcher makes up
to a dozen such calls per launch, which adds up at the small shapes where host time is the whole cost. The
plans built from it are cached per geometry by the launchers (``functools.lru_cache``).

Random numbers follow the counter layout documented in ``effdrop_triton.masks``: ``tl.philox`` is called
with explicit 32-bit counter words (never ``tl.rand`` on int64 offsets, whose meaning changed between
Triton releases).
"""

import triton
import triton.language as tl
from torch.library import wrap_triton

from effdrop_triton.backend import launch_tracing
from effdrop_triton.levels import DropLevel

# --- the launch ---


def launcher(kernel):
    """``kernel`` itself for an eager launch; ``wrap_triton(kernel)`` while the launch is traced, so that
    the graph records it and the compiled graph makes it."""
    return wrap_triton(kernel) if launch_tracing.active else kernel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# --- random numbers ---

# the levels as compile-time constants: a level's number is its Philox stream word and a kernel's LEVEL value
NEURON = tl.constexpr(int(DropLevel.NEURON))
CHANNEL = tl.constexpr(int(DropLevel.CHANNEL))
PATH = tl.constexpr(int(DropLevel.PATH))
LAYER = tl.constexpr(int(DropLevel.LAYER))


@triton.jit
def philox_words(seed, counter, level: tl.constexpr):
    """Four uint32 Philox outputs for int64 ``counter`` (any shape) on ``level``'s stream."""
    lo = (counter & 0xFFFFFFFF).to(tl.uint32)
    hi = (counter >> 32).to(tl.uint32)
    zero = lo * 0
    return tl.philox(seed, lo, hi, zero + level, zero)


@triton.jit
def unit_keep(seed, unit, level: tl.constexpr, threshold):
    """Keep decision of gated units: word 0 below the 32-bit threshold (an int64)."""
    word0, _, _, _ = philox_words(seed, unit, level)
    return word0.to(tl.int64) < threshold


@triton.jit
def select_half_word(words, lane):
    """The 16-bit number of ``lane`` (0..7) of a call's four ``words``: half ``lane % 2`` of word ``lane // 2``."""
    w0, w1, w2, w3 = words
    word = tl.where(lane < 4, tl.where(lane < 2, w0, w1), tl.where(lane < 6, w2, w3))
    shift = ((lane & 1) * 16).to(tl.uint32)
    return ((word >> shift) & 0xFFFF).to(tl.int32)


@triton.jit
def group_words(seed_ptr, first, ALIGNED: tl.constexpr):
    """``(head, tail)`` words of groups of 8 logical neighbours starting at int64 index ``first``: the Philox
    call holding a group's first element and, unless ALIGNED (``first % 8 == 0``), the next call, which
    the group's end may fall in."""
    seed = tl.load(seed_ptr)
    head = philox_words(seed, first >> 3, NEURON)
    tail = head
    if not ALIGNED:
        tail = philox_words(seed, (first >> 3) + 1, NEURON)
    return head, tail


@triton.jit
def group_keep(words, first, j, threshold, ALIGNED: tl.constexpr):
    """Drop-neuron keep decision of element ``first + j`` (``j`` in 0..7) from its group's ``group_words``."""
    head, tail = words
    if ALIGNED:
        u16 = select_half_word(head, j)
    else:
        k = (first & 7).to(tl.int32) + j  # place in the head call; 8.. fall in the tail call
        second = k >= 8
        u16 = select_half_word((tl.where(second, tail[0], head[0]), tl.where(second, tail[1], head[1]),
                                tl.where(second, tail[2], head[2]), tl.where(second, tail[3], head[3])), k & 7)
    return u16 < threshold


# --- tiles of an (N, C, S) view ---


@triton.jit
def split_pid(num_inner, num_middle):
    """``(inner, middle, outer)`` block indices of this program: the grid runs inner-most first."""
    pid = tl.program_id(0).to(tl.int64)
    return pid % num_inner, (pid // num_inner) % num_middle, pid // (num_inner * num_middle)


@triton.jit
def tile(N, C, num_s_blocks, num_c_blocks, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Indices ``n [BN, 1, 1], c [1, BC, 1], s [1, 1, BS]`` of this program's tile (``tile_plan``) and the
    (n, c) bounds mask."""
    s_block, c_block, n_block = split_pid(num_s_blocks, num_c_blocks)
    n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64))[:, None, None]
    c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :, None]
    s = (s_block * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64))[None, None, :]
    return n, c, s, (n < N) & (c < C)


@triton.jit
def reduction_rows(num_c_blocks, num_chunks, BLOCK_C: tl.constexpr):
    """``(n, c [BC], k)`` of a program of ``reduction_plan``: one sample's chunk ``k`` of BLOCK_C channels."""
    k, c_block, n = split_pid(num_chunks, num_c_blocks)
    return n, c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64), k


@triton.jit
def address(ptr, n, c, s, sn, sc, ss, S_UNIT_STRIDE: tl.constexpr, C_UNIT_STRIDE: tl.constexpr):
    """Address of (n, c, s) of an (N, C, S) view; a unit stride is a constant, so the accesses along it
    vectorize."""
    if S_UNIT_STRIDE:
        ss = 1
    if C_UNIT_STRIDE:
        sc = 1
    return ptr + n * sn + c * sc + s * ss


def unit_strides(S: int, *strides) -> dict:
    """The S_UNIT_STRIDE / C_UNIT_STRIDE constexprs when every (N, C, S) view shares the layout kind:
    positions (NCHW) or channels (channels_last) are the contiguous axis."""
    s_unit = S > 1 and all(st[2] == 1 for st in strides)
    c_unit = all(st[1] == 1 for st in strides) and not s_unit
    return dict(S_UNIT_STRIDE=s_unit, C_UNIT_STRIDE=c_unit)


def _cs_blocks(C: int, S: int, c_unit: bool, channels_minor_elements: int):
    """``(BLOCK_C, BLOCK_S)``: the contiguous axis in 16-byte vectors; channels_last tiles are 64 channels
    wide (a thread reuses its channels' constants over many positions)."""
    if c_unit:
        block_c = min(64, next_power_of_2(C))
        return block_c, max(1, min(next_power_of_2(S), channels_minor_elements // block_c))
    block_s = min(1024, next_power_of_2(S))
    return max(1, min(next_power_of_2(C), 2048 // block_s)), block_s


def tile_plan(N: int, C: int, S: int, c_unit: bool):
    """``(grid, (num_s_blocks, num_c_blocks), constexprs)`` of the elementwise ``tile``: several samples
    per program when C * S is small."""
    block_c, block_s = _cs_blocks(C, S, c_unit, 8192)
    block_n = max(1, min(next_power_of_2(N), (8192 if c_unit else 2048) // (block_c * block_s)))
    num_s_blocks, num_c_blocks = cdiv(S, block_s), cdiv(C, block_c)
    return ((cdiv(N, block_n) * num_c_blocks * num_s_blocks,), (num_s_blocks, num_c_blocks),
            dict(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4))


# programs to aim for: enough to fill a large GPU when few rows are reduced (their blocks are split into chunks)
TARGET_PROGRAMS = 1024


def chunks(num_blocks: int, rows: int):
    """``(num_chunks, blocks_per_chunk)``: the blocks of each of ``rows`` reductions shared out so that
    about TARGET_PROGRAMS programs run."""
    count = max(1, min(num_blocks, cdiv(TARGET_PROGRAMS, rows)))
    per_chunk = cdiv(num_blocks, count)
    return cdiv(num_blocks, per_chunk), per_chunk


def reduction_plan(N: int, C: int, S: int, c_unit: bool):
    """``(grid, (num_c_blocks, num_chunks, chunk, blocks_per_chunk), constexprs)`` of a reduction over the
    positions (``reduction_rows``): a program walks ``chunk`` positions of BLOCK_C channels of one sample
    in blocks of BLOCK_S."""
    block_c, block_s = _cs_blocks(C, S, c_unit, 2048)
    num_c_blocks = cdiv(C, block_c)
    num_chunks, blocks_per_chunk = chunks(cdiv(S, block_s), N * num_c_blocks)
    return ((N * num_c_blocks * num_chunks,), (num_c_blocks, num_chunks, blocks_per_chunk * block_s, blocks_per_chunk),
            dict(BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4))


# --- drop-neuron's tiles: groups of 8 logical neighbours, which share a Philox call ---
# A program holds whole groups and each thread makes its groups' calls once.
ROW_GROUPS: tl.constexpr = tl.constexpr(0)  # S > 1 (NCHW, strided): 8 positions of an (n, c) row, vectors along s
CHANNEL_VECTORS: tl.constexpr = tl.constexpr(1)  # S > 1, channels_last: 8 positions per channel, vectors along c
CHANNEL_GROUPS: tl.constexpr = tl.constexpr(2)  # S == 1: 8 channels of a sample, vectors along c


@triton.jit
def neuron_tile(n_block, c_block, g_block, C, S, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """The groups of the tile at block indices (n, c, g) (``neuron_plan``): ``n``, ``c`` (a CHANNEL_GROUPS
    group's first channel), the group index ``g`` along the grouped axis and ``first``, the logical index
    of the group's first element."""
    if TILE == ROW_GROUPS:
        t = tl.arange(0, BLOCK_N * BLOCK_C * BLOCK_G)[:, None]  # [T, 1]: one group per row
        n = n_block * BLOCK_N + t // (BLOCK_C * BLOCK_G)
        c = c_block * BLOCK_C + (t // BLOCK_G) % BLOCK_C
    else:
        t = tl.arange(0, BLOCK_N * BLOCK_G)[:, None]  # [T, 1]
        n = n_block * BLOCK_N + t // BLOCK_G
        c = (c_block * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64))[None, :]  # [1, BC]; BC = 1 for CHANNEL_GROUPS
    g = g_block * BLOCK_G + t % BLOCK_G
    if TILE == CHANNEL_GROUPS:
        c = g * 8
        first = n * C + c
    else:
        first = (n * C + c) * S + g * 8  # [T, 1] or [T, BC]
    return n, c, g, first


@triton.jit
def program_neuron_tile(C, S, num_g_blocks, num_c_blocks, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    """``neuron_tile`` of this program: the grid runs along the groups first."""
    g_block, c_block, n_block = split_pid(num_g_blocks, num_c_blocks)
    return neuron_tile(n_block, c_block, g_block, C, S, TILE, BLOCK_N, BLOCK_C, BLOCK_G)


@triton.jit
def neuron_piece(n, c, g, piece: tl.constexpr, N, C, S, TILE: tl.constexpr, LANES: tl.constexpr):
    """``(c, s, j, in_bounds)`` of one piece of a ``neuron_tile``'s groups: its elements' channel and position,
    their place ``j`` (0..7) in the group (for ``group_keep``) and bounds. A piece is LANES neighbours (one
    16-byte vector) of every group; the 8 // LANES pieces stay in the thread that holds the groups' calls.
    (No Philox word goes in: an address made from one would count as a write to the seed for the mutation
    analysis of a traced launch.)"""
    j = piece * LANES + tl.arange(0, LANES)[None, :]  # [1, LANES]
    if TILE == CHANNEL_GROUPS:
        c = c + j
        s = 0
    else:
        s = g * 8 + j
    return c, s, j, (n < N) & (c < C) & (s < S)


def neuron_plan(N: int, C: int, S: int, c_unit: bool, element_size: int):
    """``(grid, (num_g_blocks, num_c_blocks), constexprs)`` of a ``program_neuron_tile`` over an (N, C, S)
    view."""
    lanes = min(8, 16 // element_size)  # one 16-byte vector
    if S == 1:  # (N, C) input: the 8 neighbours are channels
        tile_kind, grouped = CHANNEL_GROUPS, C
        block_g = min(next_power_of_2(cdiv(C, 8)), 256)
        block_c = 1
        block_n = max(1, min(next_power_of_2(N), 256 // block_g))
        vectors = block_n * block_g
    elif c_unit:
        tile_kind, grouped, lanes = CHANNEL_VECTORS, S, 1
        block_c = min(64, next_power_of_2(C))
        block_g = min(next_power_of_2(cdiv(S, 8)), max(1, 1024 // block_c))
        block_n = max(1, min(next_power_of_2(N), 1024 // (block_c * block_g)))
        vectors = block_n * block_g * block_c * element_size // 16
    else:
        tile_kind, grouped = ROW_GROUPS, S
        block_g = min(next_power_of_2(cdiv(S, 8)), 256)
        block_c = max(1, min(next_power_of_2(C), 256 // block_g))
        block_n = max(1, min(next_power_of_2(N), 256 // (block_c * block_g)))
        vectors = block_n * block_c * block_g
    if grouped % 8:  # groups straddle calls and rows cannot be 16-byte aligned: one element per piece
        lanes = 1  # (wider pieces make Triton 3.6 recompute the words per element)
    num_g_blocks = cdiv(cdiv(grouped, 8), block_g)
    num_c_blocks = 1 if tile_kind is CHANNEL_GROUPS else cdiv(C, block_c)
    grid = (cdiv(N, block_n) * num_c_blocks * num_g_blocks,)
    # as many threads as 16-byte vectors in one piece: none computes another's Philox call
    constexprs = dict(TILE=tile_kind.value, ALIGNED=grouped % 8 == 0, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_G=block_g,
                      LANES=lanes, num_warps=max(1, min(4, vectors // 32)))
    return grid, (num_g_blocks, num_c_blocks), constexprs
