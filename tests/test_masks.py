"""The PyTorch Philox and the documented counter layout, against an independent pure-Python Philox."""

import pytest
import torch

from effdrop_triton import masks
from effdrop_triton.levels import DropLevel

M32 = 0xFFFFFFFF


def philox_reference(counter, key, rounds=10):
    """Philox4x32 straight from Salmon et al. (SC'11), in Python integers."""
    c = list(counter)
    k0, k1 = key
    for _ in range(rounds):
        prod0 = 0xD2511F53 * c[0]
        prod1 = 0xCD9E8D57 * c[2]
        c = [((prod1 >> 32) ^ c[1] ^ k0) & M32, prod1 & M32, ((prod0 >> 32) ^ c[3] ^ k1) & M32, prod0 & M32]
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c


# Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_matches_known_answers(counter, key, expected):
    assert tuple(philox_reference(counter, key)) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_torch_philox_matches_known_answers(counter, key, expected):
    words = [torch.tensor([c], dtype=torch.int64) for c in counter]
    out = masks.philox4x32(*words, *key)
    assert tuple(int(w) for w in out) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_numpy_and_lane_philox_match_known_answers(counter, key, expected):
    """The CPU's two forms: NumPy arrays (in place, stacked pairs) and Python ints with 64-bit lanes, here
    three lanes (the vector repeated) so that a carry across lanes would show."""
    import numpy as np

    words = [np.full(3, c, dtype=np.uint64) for c in counter]
    assert [w.tolist() for w in masks.philox4x32(*words, *key)] == [[e] * 3 for e in expected]
    lanes = masks._to_lanes(np.ones(3, np.uint64))
    out = masks.philox4x32(*(c * lanes for c in counter), *key, lanes=lanes)
    assert [masks._from_lanes(w, 3).tolist() for w in out] == [[e] * 3 for e in expected]


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 7, 2**63 - 1])
def test_philox_words_counter_layout(seed):
    counters = [0, 1, 12345, 2**32 - 1, 2**32, 2**40 + 3, 2**62 + 11]
    words = masks.philox_words(torch.tensor(counters), torch.tensor(seed), DropLevel.CHANNEL)
    for i, counter in enumerate(counters):
        expected = philox_reference((counter & M32, counter >> 32, DropLevel.CHANNEL, 0), (seed & M32, seed >> 32))
        assert [int(w[i]) for w in words] == expected


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_neuron_keep_rule(p):
    seed = 987654321
    numel = 8 * 37 + 5  # a partial last Philox call
    keep = masks.neuron_keep(numel, torch.tensor(seed), p)
    threshold = round((1 - p) * 65536)
    expected = []
    for call in range((numel + 7) // 8):
        words = philox_reference((call, 0, DropLevel.NEURON, 0), (seed & M32, seed >> 32))
        for lane in range(8):
            expected.append(((words[lane // 2] >> (16 * (lane % 2))) & 0xFFFF) < threshold)
    assert keep.tolist() == expected[:numel]


def test_neuron_keep_is_chunk_independent(monkeypatch):
    seed = torch.tensor(5)
    whole = masks.neuron_keep(8 * 1000 + 3, seed, 0.5)
    monkeypatch.setattr(masks, "_NEURON_CHUNK_CALLS", 7)
    assert torch.equal(masks.neuron_keep(8 * 1000 + 3, seed, 0.5), whole)


@pytest.mark.parametrize("n_units", [50, masks._LANES_MAX_CALLS + 1])  # Python-int lanes / NumPy
def test_unit_keep_rule(n_units):
    seed = 2**40 + 17
    units = torch.arange(n_units)
    keep = masks.unit_keep(units, torch.tensor(seed), DropLevel.LAYER, 0.3)
    threshold = round(0.7 * 2**32)
    expected = [philox_reference((u, 0, DropLevel.LAYER, 0), (seed & M32, seed >> 32))[0] < threshold
                for u in range(n_units)]
    assert keep.tolist() == expected


def test_unit_keep_table_matches_unit_keep_on_both_paths():
    """The table's unit arithmetic (per sample, base, channels per unit), against unit_keep on the same units."""
    seed = torch.tensor(123)
    for N, C in [(3, 10), (9, 40)]:  # 30 and 360 units: lanes / NumPy
        table = masks.unit_keep_table(N, C, seed, 0.4, level=DropLevel.PATH, per_sample=True, units_per_sample=7,
                                      unit_base=2, channels_per_unit=2)
        units = torch.arange(N)[:, None] * 7 + 2 + torch.arange(C)[None] // 2
        assert torch.equal(table, masks.unit_keep(units, seed, DropLevel.PATH, 0.4))


def test_packed_neuron_bits_are_the_keep_mask():
    seed = torch.tensor(77)
    numel = 8 * 300 + 5
    bits = masks.neuron_keep_bits(numel, seed, 0.3)
    assert bits.dtype == torch.uint8 and bits.numel() == (numel + 7) // 8
    keep = masks.neuron_keep(numel, seed, 0.3)
    unpacked = (bits[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # bit j of byte g: element 8g + j
    assert torch.equal(unpacked.view(-1)[:numel].bool(), keep)
    assert torch.equal(masks.dropped_from_bits(bits, numel), ~keep)


def test_levels_are_the_documented_streams():
    """The paper repository's numbering is the counter's stream word (README, Randomness contract)."""
    assert [(int(level), level.label) for level in DropLevel] == [(0, "neuron"), (1, "channel"), (2, "path"),
                                                                  (3, "layer")]
    for number, name in enumerate(("neuron", "channel", "path", "layer")):
        assert DropLevel.parse(number) is DropLevel.parse(name) is DropLevel(number)


def test_level_parse_takes_any_integral_number():
    import numpy as np

    assert DropLevel.parse(np.int64(2)) is DropLevel.PATH and DropLevel.parse(torch.tensor(3).item()) is DropLevel.LAYER


@pytest.mark.parametrize("value", [4, -1, True, "Neuron", "drop", 1.0, None])
def test_level_parse_rejects(value):
    with pytest.raises(ValueError, match=r"drop_type must be one of 0 / 'neuron', 1 / 'channel'"):
        DropLevel.parse(value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_packed_gate_in_blocks_is_the_whole_tensor_gate(monkeypatch, dtype):
    """``gate_elements`` walks contiguous tensors in blocks (a tail block too); the non-contiguous path gates the
    whole tensor at once: the same bits either way, +0.0 for every dropped element, whatever its value."""
    x = torch.randn(5, 7, 11).to(dtype)
    x.view(-1)[::5] = float("inf")
    x.view(-1)[1::9] = -0.0
    bits = masks.neuron_keep_bits(x.numel(), torch.tensor(4), 0.5)
    monkeypatch.setattr(masks, "_GATE_BLOCK", 16)
    blocks = torch.empty_like(x)
    masks.gate_elements(x, blocks, bits, 2.0)
    whole = torch.empty_like(x.transpose(0, 2)).transpose(0, 2)  # a non-contiguous output: the other path
    masks.gate_elements(x, whole, bits, 2.0)
    keep = ~masks.dropped_from_bits(bits, x.numel()).view(x.shape)
    int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(blocks.view(int_type), whole.contiguous().view(int_type))
    assert torch.equal(blocks[keep], x[keep] * 2.0) and not blocks.view(int_type)[~keep].any()


@pytest.mark.parametrize("p", [1e-6, 2.0**-17])  # round((1 - p) * 2**16) is 2**16: every element kept
def test_tiny_p_keeps_every_element(p):
    import effdrop_triton as ed

    assert bool(masks.neuron_keep(8 * 5 + 3, torch.tensor(9), p).all())
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(ed.drop_neuron(x, p, seed=9), x * masks.keep_scale(p), rtol=0, atol=0)
