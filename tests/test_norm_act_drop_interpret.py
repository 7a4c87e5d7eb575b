"""The fused norm -> ReLU -> dropout kernels against the PyTorch fallback under TRITON_INTERPRET=1.

Run as its own pytest invocation: ``TRITON_INTERPRET=1 pytest tests/test_norm_act_drop_interpret.py``.

Exact where the math is elementwise: fed the same statistics, the apply pass is bit-identical
in fp32 (within 1 ulp in fp16/bf16) and its masks are the standalone ops' masks. Reductions
(statistics, weight/bias sums and the input gradient built from them) run in another order
than PyTorch's native kernels, so they are compared with a tight fp32 tolerance.
"""

import pytest
import torch
import torch.nn.functional as F

import effdrop_triton as ed
from effdrop_triton.levels import DropLevel
from effdrop_triton.functional import norm_act_drop, norm_act_drop_conv2d
from conftest import INTERPRET, assert_within_ulp, nonzero_randn

triton = pytest.importorskip("triton")

if not INTERPRET:
    pytest.skip("needs TRITON_INTERPRET=1 set before the kernels are imported", allow_module_level=True)
pytestmark = pytest.mark.interpret

TIGHT = dict(rtol=2e-5, atol=2e-6)
LAYOUTS = ["contiguous", "channels_last", "strided"]
NORMS = [("bn", None), ("gn", 3)]


def make_inputs(shape, dtype=torch.float32, layout="contiguous", generator_seed=0):
    x = nonzero_randn(shape, dtype, layout, generator_seed=generator_seed)
    g = torch.Generator().manual_seed(generator_seed + 1)
    C = shape[1]
    weight = torch.randn(C, generator=g)
    bias = torch.randn(C, generator=g) * 0.3
    return x, weight, bias


def both(fn):
    """``fn()`` on the fallback and on Triton."""
    with ed.use_backend("torch"):
        reference = fn()
    with ed.use_backend("triton"):
        actual = fn()
    return reference, actual


def stats_op(x, num_groups, use_triton, running=(None, None, None), momentum=0.1):
    return torch.ops.effdrop.norm_stats(x, *running, num_groups, momentum, use_triton)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 6, 1, 97), (3, 3, 2, 2), (4, 6)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics(shape, layout, dtype):
    if len(shape) == 2 and layout == "channels_last":
        layout = "strided"
    x = nonzero_randn(shape, dtype, layout) * 2 + 5
    for num_groups in (3, 0):
        ref, out = both(lambda: stats_op(x, num_groups, ed.backend.use_triton(x)))
        assert out.dtype == torch.float32 and out.shape == ref.shape == (
            (2, shape[0], 3) if num_groups else (2, 1, shape[1]))
        torch.testing.assert_close(out, ref, **TIGHT)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_running_statistics_update_on_the_device(momentum, dtype):
    """The merge pass updates the running statistics as F.batch_norm (momentum=None: the cumulative average,
    its weight read from num_batches_tracked on the device)."""
    x = nonzero_randn((4, 5, 3, 7)) * 3 + 2
    initial = (torch.randn(5, generator=torch.Generator().manual_seed(2)).to(dtype),
               torch.rand(5, generator=torch.Generator().manual_seed(3)).add(0.5).to(dtype))
    count = torch.tensor(3)
    results = {}
    for use in (False, True):
        mean, var = (t.clone() for t in initial)
        stats_op(x, 0, use, (mean, var, count if momentum is None else None), momentum or 0.0)
        results[use] = (mean, var)
    expected_mean, expected_var = (t.clone().float() for t in initial)
    F.batch_norm(x, expected_mean, expected_var, training=True, momentum=1 / 3 if momentum is None else momentum)
    tol = TIGHT if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    for use in (False, True):
        torch.testing.assert_close(results[use][0].float(), expected_mean, **tol)
        torch.testing.assert_close(results[use][1].float(), expected_var, **tol)
        assert results[use][0].dtype == dtype


def test_statistics_merge_chunks_and_blocks(monkeypatch):
    """Long rows: merged across programs (several chunks) and across blocks within one program."""
    from effdrop_triton.kernels import common, norm_stats

    x = nonzero_randn((1, 2, 1, 3000)) + 100
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    for target in (1024, 1):  # 3 chunks of 1024 / one chunk of 3 blocks
        monkeypatch.setattr(common, "TARGET_PROGRAMS", target)
        norm_stats._plan.cache_clear()  # launch plans are cached per geometry
        mean, var = stats_op(x, 0, True)[:, 0]
        torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-7, atol=0)
        torch.testing.assert_close(var.double(), var_ref, rtol=1e-5, atol=0)


def _stats_for(x, norm, num_groups):
    """Statistics from the fallback, so both backends' apply passes see the same numbers."""
    return stats_op(x.detach(), num_groups or 0, False)


def apply_op(x, weight, bias, stats, seed, num_groups, batch_stats, act, level, p, use_triton):
    return torch.ops.effdrop.norm_act_drop(x, weight, bias, stats, seed, num_groups, 1e-5, act, level, p, batch_stats,
                                           use_triton)


LEVELS = [None, DropLevel.NEURON, DropLevel.CHANNEL]  # None: no dropout


@pytest.mark.parametrize("norm,num_groups", NORMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("act", [True, False])
def test_apply_pass_is_bit_identical_with_the_same_statistics(norm, num_groups, layout, level, act):
    x, weight, bias = make_inputs((3, 6, 5, 7), layout=layout)
    stats = _stats_for(x, norm, num_groups)
    seed = None if level is None else torch.tensor(77)
    outs = [apply_op(x, weight, bias, stats, seed, num_groups or 0, True, act, level, 0.4, use) for use in (False, True)]
    assert outs[1].stride() == outs[0].stride()
    assert torch.equal(outs[1], outs[0])
    if level is not None:
        assert 0 < (outs[1] == 0).sum()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_apply_pass_low_precision_within_one_ulp(dtype, layout):
    x, weight, bias = make_inputs((3, 6, 5, 7), dtype, layout)
    stats = _stats_for(x, "bn", None)
    outs = [apply_op(x, weight, bias, stats, torch.tensor(5), 0, True, True, DropLevel.CHANNEL, 0.4, use)
            for use in (False, True)]
    assert torch.equal(outs[1] == 0, outs[0] == 0)
    assert_within_ulp(outs[1], outs[0])


@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mask_is_the_standalone_ops_mask(drop_type, layout):
    x, weight, bias = make_inputs((3, 8, 4, 5), layout=layout)
    with ed.use_backend("triton"):
        out = norm_act_drop(x, weight, bias.abs() + 10, drop_type=drop_type, p=0.5, seed=123)  # all positive
        standalone = (ed.drop_channel if drop_type == "channel" else ed.drop_neuron)(torch.ones_like(x), 0.5, seed=123)
    assert torch.equal(out == 0, standalone == 0)


def grads_of(fn, x, weight, bias, grad):
    x, weight, bias = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    out = fn(x, weight, bias)
    out.backward(grad)
    return [out.detach(), x.grad, weight.grad, bias.grad]


@pytest.mark.parametrize("shape", [(2, 6, 4, 4), (2, 3, 5, 7), (3, 24), (4, 30)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("norm,num_groups,batch_stats", [("bn", None, True), ("bn", None, False), ("gn", 3, True)])
def test_neuron_groups_aligned_and_straddling(shape, layout, norm, num_groups, batch_stats):
    """8 logical neighbours share a Philox call: groups start on a call (H * W or, for 2-d input, C a
    multiple of 8) or straddle two. Output bit-identical, mask the standalone op's, gradients close."""
    x, weight, bias = make_inputs(shape, layout=layout)
    grad = nonzero_randn(x.shape, layout=layout, generator_seed=9)
    stats = _stats_for(x, norm, num_groups)
    results = [grads_of(lambda a, w, b: apply_op(a, w, b, stats, torch.tensor(31), num_groups or 0, batch_stats, False,
                                                 DropLevel.NEURON, 0.5, use), x, weight, bias, grad) for use in (False, True)]
    assert torch.equal(results[1][0], results[0][0])
    with ed.use_backend("triton"):
        standalone = ed.drop_neuron(torch.ones_like(x), 0.5, seed=31)
    assert torch.equal(results[1][0] == 0, standalone == 0)
    for a, b in zip(results[1][1:], results[0][1:]):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("norm,num_groups", [("bn", None), ("gn", 2)])
@pytest.mark.parametrize("shape,layout", [((1, 2, 1, 3001), "contiguous"), ((1, 2, 1, 9000), "channels_last")])
def test_neuron_sums_merge_chunks_and_blocks(monkeypatch, norm, num_groups, shape, layout):
    """Drop-neuron weight/bias sums over long rows: several chunks (programs) and several group blocks in
    one program, with groups of 8 straddling two Philox calls (S % 8 != 0) or starting on one."""
    from effdrop_triton.kernels import common, norm_act_drop

    x, weight, bias = make_inputs(shape, layout=layout)
    grad = nonzero_randn(x.shape, layout=layout, generator_seed=9)
    stats = _stats_for(x, norm, num_groups)

    def run(use):
        return grads_of(lambda a, w, b: apply_op(a, w, b, stats, torch.tensor(13), num_groups or 0, True, True,
                                                 DropLevel.NEURON, 0.5, use), x, weight, bias, grad)

    reference = run(False)
    for target in (1024, 1):  # one group block per chunk / one chunk of every block
        monkeypatch.setattr(common, "TARGET_PROGRAMS", target)
        norm_act_drop._bwd_plan.cache_clear()  # launch plans are cached per geometry
        for a, b in zip(run(True), reference):
            torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("norm,num_groups,batch_stats", [("bn", None, True), ("bn", None, False), ("gn", 3, True)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("level", LEVELS)
def test_backward_with_the_same_statistics(norm, num_groups, batch_stats, layout, level):
    x, weight, bias = make_inputs((3, 6, 5, 7), layout=layout)
    grad = nonzero_randn(x.shape, layout=layout, generator_seed=9)
    stats = _stats_for(x, norm, num_groups)
    seed = None if level is None else torch.tensor(31)
    results = [grads_of(lambda a, w, b: apply_op(a, w, b, stats, seed, num_groups or 0, batch_stats, True, level, 0.3,
                                                 use), x, weight, bias, grad)
               for use in (False, True)]
    assert torch.equal(results[1][0], results[0][0])
    assert results[1][1].stride() == results[0][1].stride()
    for a, b in zip(results[1][1:], results[0][1:]):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("norm,num_groups", NORMS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_functional_end_to_end(norm, num_groups, training, dtype):
    x, weight, bias = make_inputs((4, 6, 3, 5), dtype)
    grad = nonzero_randn(x.shape, dtype, generator_seed=4)
    running = {}

    def fn(a, w, b):
        stats = (torch.zeros(6), torch.ones(6)) if norm == "bn" else (None, None)
        out, channel_stats = norm_act_drop(a, w, b, *stats, norm=norm, num_groups=num_groups, training=training,
                                           p=0.3, seed=6, input_stats=True)
        running[ed.get_backend()] = stats + channel_stats
        return out

    with ed.use_backend("torch"):
        reference = grads_of(fn, x, weight, bias, grad)
    with ed.use_backend("triton"):
        actual = grads_of(fn, x, weight, bias, grad)
    tol = TIGHT if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    assert torch.equal(actual[0] == 0, reference[0] == 0)  # the same units dropped (and rectified)
    for a, b in zip(actual, reference):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(running["triton"], running["torch"]):
        if a is not None:
            torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("norm,shape,num_groups", [
    ("bn", (2, 1, 5, 5), None),
    ("bn", (3, 4, 1, 97), None),
    ("bn", (5, 3), None),
    ("gn", (1, 6, 1, 97), 2),
    ("gn", (2, 5, 3, 3), 5),
])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
def test_awkward_shapes(norm, shape, num_groups, drop_type):
    x, weight, bias = make_inputs(shape)
    grad = nonzero_randn(shape, generator_seed=2)

    def fn(a, w, b):
        return norm_act_drop(a, w, b, norm=norm, num_groups=num_groups, drop_type=drop_type, p=0.3, seed=5)

    reference, actual = both(lambda: grads_of(fn, x, weight, bias, grad))
    assert torch.equal(actual[0] == 0, reference[0] == 0)  # the same units dropped (and rectified)
    for a, b in zip(actual, reference):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_variant(layout):
    x, weight, bias = make_inputs((2, 4, 5, 6), layout=layout)
    conv_weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(3)) * 0.2

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias, conv_weight)]
        out = norm_act_drop_conv2d(leaves[0], leaves[1], leaves[2], None, None, leaves[3], padding=1, p=0.3, seed=2)
        out.backward(torch.ones_like(out))
        return [out.detach()] + [t.grad for t in leaves]

    reference, actual = both(run)
    for a, b in zip(actual, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
