"""Triton kernels against the PyTorch fallback under TRITON_INTERPRET=1 (small shapes).

Run as its own pytest invocation: ``TRITON_INTERPRET=1 pytest tests/test_triton_interpret.py``
(the variable must be set before Triton's kernels are defined).
"""

import pytest
import torch

import effdrop_triton as ed
from conftest import INTERPRET, assert_within_ulp, nonzero_randn

triton = pytest.importorskip("triton")
tl = triton.language
from effdrop_triton.kernels.common import philox_words  # noqa: E402

if not INTERPRET:
    pytest.skip("needs TRITON_INTERPRET=1 set before the kernels are imported", allow_module_level=True)
pytestmark = pytest.mark.interpret

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 8, 4, 4), (2, 13, 3, 1)]
LAYOUTS = ["contiguous", "channels_last", "strided"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def run_both(fn, *inputs):
    """Forward and input gradients of ``fn`` on the fallback and on Triton, for the same seed."""
    results = {}
    for name in ("torch", "triton"):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with ed.use_backend(name):
            out = fn(*leaves)
            grad = nonzero_randn(out.shape, out.dtype, generator_seed=99)
            out.backward(grad)
        results[name] = (out.detach(), [t.grad for t in leaves])
    return results["torch"], results["triton"]


def assert_parity(reference, actual, exact):
    (ref_out, ref_grads), (out, grads) = reference, actual
    assert out.stride() == ref_out.stride(), "the two backends lay out the output differently"
    for a, b in [(out, ref_out), *zip(grads, ref_grads)]:
        assert torch.equal(a == 0, b == 0), "masks differ"
        if exact:
            assert torch.equal(a, b)
        else:
            assert_within_ulp(a, b)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_drop_neuron(shape, layout, dtype, p):
    x = nonzero_randn(shape, dtype, layout)
    ref, out = run_both(lambda t: ed.drop_neuron(t, p, seed=1234), x)
    assert_parity(ref, out, exact=dtype == torch.float32)


def test_drop_neuron_kernel_saves_only_the_seed():
    """The GPU path keeps 8 bytes where the CPU fallback keeps its packed mask (``tests/test_memory.py``)."""
    from effdrop_triton.testing import saved_for_backward

    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    with ed.use_backend("triton"):
        assert saved_for_backward(lambda t: ed.drop_neuron(t, 0.3), x)[1] == 8
    with ed.use_backend("torch"):
        assert saved_for_backward(lambda t: ed.drop_neuron(t, 0.3), x)[1] == (x.numel() + 7) // 8


@pytest.mark.parametrize("shape", [(2, 3, 16, 8), (1, 5, 9, 2), (2, 4, 24)])
def test_drop_neuron_channels_last_aligned_and_unaligned_spatial(shape):
    x = nonzero_randn(shape, torch.float32, "channels_last")
    ref, out = run_both(lambda t: ed.drop_neuron(t, 0.5, seed=77), x)
    assert_parity(ref, out, exact=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_drop_channel(shape, layout, dtype, p):
    x = nonzero_randn(shape, dtype, layout)
    ref, out = run_both(lambda t: ed.drop_channel(t, p, seed=99), x)
    assert_parity(ref, out, exact=dtype == torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_drop_path_list(layout, dtype, mode, p):
    branches = [nonzero_randn((3, c, 5, 3), dtype, layout, generator_seed=c) for c in (1, 4, 3)]
    ref, out = run_both(lambda *b: ed.drop_path(list(b), p, mode=mode, seed=5), *branches)
    assert_parity(ref, out, exact=dtype == torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_drop_path_groups(layout, dtype, mode):
    x = nonzero_randn((3, 12, 5, 3), dtype, layout)
    ref, out = run_both(lambda t: ed.drop_path(t, 0.5, groups=4, mode=mode, seed=8), x)
    assert_parity(ref, out, exact=dtype == torch.float32)


LAYER_CASES = [(shape, layout) for shape in SHAPES + [(7, 2)] for layout in LAYOUTS
               if not (len(shape) == 2 and layout == "channels_last")]


@pytest.mark.parametrize("shape,layout", LAYER_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_drop_layer(shape, layout, dtype, mode, p):
    branch = nonzero_randn(shape, dtype, layout)
    shortcut = nonzero_randn(shape, dtype, layout, generator_seed=3)
    ref, out = run_both(lambda b, s: ed.drop_layer(b, s, p, mode=mode, seed=31), branch, shortcut)
    (ref_out, ref_grads), (got, grads) = ref, out
    assert got.stride() == ref_out.stride()
    assert_within_ulp(got, ref_out)  # an add follows the multiply: 1 ulp
    for a, b in zip(grads, ref_grads):
        if dtype == torch.float32:
            assert torch.equal(a, b)
        else:
            assert_within_ulp(a, b)


def test_drop_layer_mixed_layouts():
    branch = nonzero_randn((2, 3, 4, 5), layout="channels_last")
    shortcut = nonzero_randn((2, 3, 4, 5), generator_seed=2)
    ref, out = run_both(lambda b, s: ed.drop_layer(b, s, 0.5, seed=3), branch, shortcut)
    assert_within_ulp(out[0], ref[0])


def test_unit_counter_high_word():
    """Unit indices past 2**32 use the counter's high word as the documented rule (``masks.unit_keep``)."""
    from effdrop_triton import masks
    from effdrop_triton._layout import ncs
    from effdrop_triton.kernels.unit_gate import unit_gate_triton
    from effdrop_triton.levels import DropLevel

    src = nonzero_randn((3, 64, 2))
    units = torch.arange(3)[:, None] * 2**31 + 2**33 + 5 + torch.arange(64)  # unit of (n, c)
    keep = masks.unit_keep(units.reshape(-1), torch.tensor(17), DropLevel.PATH, 0.5).view(3, 64, 1)
    a, b = torch.where(keep, src * masks.keep_scale(0.5), 0.0), torch.empty_like(src)
    unit_gate_triton(ncs(src), ncs(b), torch.tensor(17), 0.5, level=DropLevel.PATH, per_sample=True,
                     units_per_sample=2**31, unit_base=2**33 + 5, channels_per_unit=1)
    assert torch.equal(a, b) and 0 < (a == 0).sum() < a.numel()


@triton.jit
def _philox_words_kernel(counter_ptr, seed_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    w0, w1, w2, w3 = philox_words(tl.load(seed_ptr), tl.load(counter_ptr + i), 3)
    tl.store(out_ptr + i * 4 + 0, w0.to(tl.int64))
    tl.store(out_ptr + i * 4 + 1, w1.to(tl.int64))
    tl.store(out_ptr + i * 4 + 2, w2.to(tl.int64))
    tl.store(out_ptr + i * 4 + 3, w3.to(tl.int64))


def test_kernel_philox_matches_torch_philox():
    from effdrop_triton import masks

    counters = torch.tensor([0, 1, 7, 2**31, 2**32 - 1, 2**32, 2**33 + 9, 2**62 + 5], dtype=torch.int64)
    seed = torch.tensor(2**63 - 12345, dtype=torch.int64)
    out = torch.empty(8, 4, dtype=torch.int64)
    _philox_words_kernel[(1,)](counters, seed, out, BLOCK=8)
    expected = torch.stack(masks.philox_words(counters.clone(), seed, 3), dim=1)
    assert torch.equal(out, expected)


def test_p0_and_eval_launch_nothing(monkeypatch):
    import effdrop_triton.kernels.drop_neuron as kernel
    import effdrop_triton.ops.drop_neuron as neuron_op

    def fail(*args, **kwargs):
        raise AssertionError("an op ran")

    monkeypatch.setattr(neuron_op, "drop_neuron_torch", fail)
    monkeypatch.setattr(kernel, "drop_neuron_triton", fail)
    x = torch.randn(3, 4)
    with ed.use_backend("triton"):
        assert ed.drop_neuron(x, 0.0) is x
        assert ed.drop_neuron(x, 0.5, training=False) is x


def test_auto_backend_picks_triton_under_interpreter(monkeypatch):
    import effdrop_triton.kernels.drop_neuron as kernel

    calls = []
    original = kernel.drop_neuron_triton
    monkeypatch.setattr(kernel, "drop_neuron_triton", lambda *a: calls.append(1) or original(*a))
    with ed.use_backend("auto"):
        ed.drop_neuron(torch.randn(4, 4), 0.5)
    assert calls == [1]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_drop_path_list_of_channel_slices(layout):
    """Branches that are channel slices of one tensor are gated in place of a copy."""
    x = nonzero_randn((3, 12, 5, 3), torch.float32, layout)
    ref, out = run_both(lambda t: ed.drop_path(list(t.split([2, 7, 3], 1)), 0.5, seed=4), x)
    assert_parity(ref, out, exact=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["neuron", "channel", "path", "path_list", "layer"])
def test_bit_identical_with_nonfinite_and_negative_inputs(op, layout):
    x = -torch.rand(4, 8, 3, 3) - 1
    x.view(-1)[::7] = float("inf")
    x.view(-1)[3::11] = float("nan")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    shortcut = torch.randn(4, 8, 3, 3)
    shortcut[1] = -0.0
    fn = {
        "neuron": lambda: ed.drop_neuron(x, 0.5, seed=3),
        "channel": lambda: ed.drop_channel(x, 0.5, seed=3),
        "path": lambda: ed.drop_path(x, 0.5, groups=4, seed=3),
        "path_list": lambda: ed.drop_path(list(x.split([3, 5], 1)), 0.5, seed=3),
        "layer": lambda: ed.drop_layer(x, shortcut, 0.5, seed=3),
    }[op]
    with ed.use_backend("torch"):
        reference = fn()
    with ed.use_backend("triton"):
        out = fn()
    if op == "layer":  # an add follows: the dropped samples are the shortcut bit for bit, kept ones within 1 ulp
        assert torch.equal(out.isnan(), reference.isnan())
        finite = ~reference.isnan()
        assert_within_ulp(out[finite], reference[finite])
    else:
        assert torch.equal(out.contiguous().view(torch.int32), reference.contiguous().view(torch.int32))


@pytest.mark.parametrize("shape", [(37, 3), (50, 2, 1, 1), (129, 4, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_many_small_samples_per_program(shape, layout, mode):
    if len(shape) == 2 and layout == "channels_last":
        layout = "strided"
    x = nonzero_randn(shape, torch.float32, layout)
    ref, out = run_both(lambda t: ed.drop_channel(t, 0.5, seed=12), x)
    assert_parity(ref, out, exact=True)
    ref, out = run_both(lambda t: ed.drop_path(t, 0.5, groups=shape[1], mode=mode, seed=12), x)
    assert_parity(ref, out, exact=True)
    ref, out = run_both(lambda t: ed.drop_layer(t, t.detach() * 2, 0.5, mode=mode, seed=12), x)
    assert_within_ulp(out[0], ref[0])
