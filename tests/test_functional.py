"""Semantics of the four levels on the PyTorch fallback, against independent references."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import binomtest, fisher_exact

import effdrop_triton as ed
from effdrop_triton import masks
from conftest import nonzero_randn, scale_of

pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture
def torch_backend():
    with ed.use_backend("torch"):
        yield


SEEDS = [0, 1, 2, 3]


def _assert_rate(dropped, total, p, ref_dropped, ref_total):
    """Binomial test of the drop count against p, and Fisher's test against the reference's count."""
    assert binomtest(dropped, total, p).pvalue > 1e-4, (dropped, total, p)
    table = [[dropped, total - dropped], [ref_dropped, ref_total - ref_dropped]]
    assert fisher_exact(table).pvalue > 1e-4, table


# ---------------------------------------------------------------------------- rates


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_neuron_rate_matches_dropout(p):
    x = torch.ones(64, 32, 8, 8)
    dropped = sum(int((ed.drop_neuron(x, p, seed=s) == 0).sum()) for s in SEEDS)
    torch.manual_seed(0)
    ref = sum(int((F.dropout(x, p) == 0).sum()) for _ in SEEDS)
    _assert_rate(dropped, x.numel() * len(SEEDS), p, ref, x.numel() * len(SEEDS))


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("reference", [F.dropout2d, F.dropout3d])
def test_drop_channel_rate_matches_dropout2d_3d(p, reference):
    shape = (64, 48, 3, 3) if reference is F.dropout2d else (64, 48, 2, 2, 2)
    x = torch.ones(shape)
    maps = x.shape[0] * x.shape[1]
    dropped = sum(int((ed.drop_channel(x, p, seed=s).flatten(2)[..., 0] == 0).sum()) for s in SEEDS)
    torch.manual_seed(0)
    ref = sum(int((reference(x, p).flatten(2)[..., 0] == 0).sum()) for _ in SEEDS)
    _assert_rate(dropped, maps * len(SEEDS), p, ref, maps * len(SEEDS))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_drop_layer_rate_matches_stochastic_depth(p):
    branch, shortcut = torch.ones(400, 3, 2, 2), torch.zeros(400, 3, 2, 2)
    seeds = range(10)
    dropped = sum(int((ed.drop_layer(branch, shortcut, p, seed=s)[:, 0, 0, 0] == 0).sum()) for s in seeds)
    torch.manual_seed(0)
    ref = sum(int((torchvision.ops.stochastic_depth(branch, p, "row")[:, 0, 0, 0] == 0).sum()) for _ in seeds)
    _assert_rate(dropped, 400 * len(seeds), p, ref, 400 * len(seeds))


@pytest.mark.parametrize("p", [0.3])
def test_drop_path_rate(p):
    branches = [torch.ones(100, c, 2, 2) for c in (1, 3, 2, 5)]
    paths = 100 * len(branches)
    dropped = 0
    for s in range(8):
        out = ed.drop_path(branches, p, seed=s)
        dropped += sum(int((piece[:, 0, 0, 0] == 0).sum()) for piece in out.split([1, 3, 2, 5], dim=1))
    torch.manual_seed(0)
    ref = sum(int((torchvision.ops.stochastic_depth(b, p, "row")[:, 0, 0, 0] == 0).sum()) for _ in range(8) for b in branches)
    _assert_rate(dropped, paths * 8, p, ref, paths * 8)


# ---------------------------------------------------------------------------- granularity and exact values


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drop_neuron_values_and_gradient(layout, dtype):
    p = 0.3
    x = nonzero_randn((3, 5, 7, 6), dtype, layout).requires_grad_()
    y = ed.drop_neuron(x, p, seed=42)
    keep = y != 0
    assert 0 < keep.sum() < keep.numel()
    scale = scale_of(p).to(dtype) if dtype == torch.float32 else 1.0 / (1.0 - p)
    assert torch.equal(y, torch.where(keep, x * scale, 0).detach())
    g = nonzero_randn(x.shape, dtype, generator_seed=1)
    y.backward(g)
    assert torch.equal(x.grad, torch.where(keep, g * scale, 0))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_drop_channel_whole_maps(layout):
    p = 0.4
    x = nonzero_randn((4, 9, 5, 3), torch.float32, layout).requires_grad_()
    y = ed.drop_channel(x, p, seed=7)
    keep = (y != 0).flatten(2)
    assert torch.equal(keep.all(-1), keep.any(-1)), "a map is partly dropped"
    keep = keep[..., :1].unsqueeze(-1)
    assert 0 < keep.sum() < keep.numel()
    assert torch.equal(y, torch.where(keep, x * scale_of(p), 0).detach())
    g = nonzero_randn(x.shape, generator_seed=3)
    y.backward(g)
    assert torch.equal(x.grad, torch.where(keep, g * scale_of(p), 0))


def test_drop_channel_layout_does_not_change_mask():
    x = nonzero_randn((4, 9, 5, 3))
    cl = x.to(memory_format=torch.channels_last)
    out, out_cl = ed.drop_channel(x, 0.5, seed=3), ed.drop_channel(cl, 0.5, seed=3)
    assert torch.equal(out, out_cl) and out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ed.drop_neuron(x, 0.5, seed=3), ed.drop_neuron(cl, 0.5, seed=3))


@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_drop_path_list_gates_whole_paths(mode):
    p = 0.5
    sizes = [2, 3, 1, 4]
    branches = [nonzero_randn((6, c, 3, 3), generator_seed=i).requires_grad_() for i, c in enumerate(sizes)]
    y = ed.drop_path(branches, p, mode=mode, seed=11)
    pieces = y.split(sizes, dim=1)
    gates = []
    for branch, piece in zip(branches, pieces):
        keep = (piece != 0).flatten(1)
        assert torch.equal(keep.all(1), keep.any(1)), "a path is partly dropped in one sample"
        gate = keep[:, 0].view(-1, 1, 1, 1)
        gates.append(gate)
        assert torch.equal(piece, torch.where(gate, branch * scale_of(p), 0).detach())
    gates = torch.cat([g.view(-1, 1) for g in gates], 1)
    if mode == "batch":
        assert torch.equal(gates, gates[:1].expand_as(gates)), "batch mode must gate a path for all samples"
    else:
        assert not torch.equal(gates, gates[:1].expand_as(gates))
    g = nonzero_randn(y.shape, generator_seed=9)
    y.backward(g)
    for branch, gate, g_piece in zip(branches, gates.T, g.split(sizes, dim=1)):
        assert torch.equal(branch.grad, torch.where(gate.view(-1, 1, 1, 1), g_piece * scale_of(p), 0))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_drop_path_groups_gates_equal_channel_blocks(layout):
    p, groups = 0.5, 4
    x = nonzero_randn((5, 12, 3, 2), torch.float32, layout).requires_grad_()
    y = ed.drop_path(x, p, groups=groups, seed=13)
    keep = (y != 0).reshape(5, groups, -1)
    assert torch.equal(keep.all(-1), keep.any(-1))
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    gate = keep[..., 0].repeat_interleave(3, dim=1)[..., None, None]
    assert torch.equal(y, torch.where(gate, x * scale_of(p), 0).detach())
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(gate, scale_of(p).expand(x.shape), 0))


def test_drop_path_groups_equals_list_of_its_blocks():
    x = nonzero_randn((5, 12, 3, 2))
    assert torch.equal(ed.drop_path(x, 0.5, groups=4, seed=1), ed.drop_path(list(x.chunk(4, 1)), 0.5, seed=1))


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_drop_layer_matches_stochastic_depth_formula(mode, layout):
    p = 0.5
    branch = nonzero_randn((16, 3, 4, 5), torch.float32, layout).requires_grad_()
    shortcut = nonzero_randn((16, 3, 4, 5), torch.float32, layout, generator_seed=5).requires_grad_()
    y = ed.drop_layer(branch, shortcut, p, mode=mode, seed=21)
    keep = ~torch.isclose(y, shortcut).flatten(1).all(1)
    if mode == "batch":
        assert keep.all() or not keep.any()
    else:
        assert 0 < keep.sum() < 16
    gate = keep.view(-1, 1, 1, 1)
    # torchvision's stochastic_depth applied with the same gate: input * noise / survival
    reference = shortcut + branch * (gate.float() / (1 - p))
    torch.testing.assert_close(y, reference, rtol=2**-23, atol=0)
    g = nonzero_randn(y.shape, generator_seed=8)
    y.backward(g)
    assert torch.equal(shortcut.grad, g)
    assert torch.equal(branch.grad, torch.where(gate, g * scale_of(p), 0))


def test_drop_layer_batch_mode_drops_whole_batch_sometimes():
    branch, shortcut = torch.ones(4, 2), torch.zeros(4, 2)
    outcomes = {bool(ed.drop_layer(branch, shortcut, 0.5, mode="batch", seed=s).any()) for s in range(20)}
    assert outcomes == {True, False}


# ---------------------------------------------------------------------------- identity, p = 1, empty


def _all_ops(x):
    return {
        "neuron": lambda p, **kw: ed.drop_neuron(x, p, **kw),
        "channel": lambda p, **kw: ed.drop_channel(x, p, **kw),
        "path": lambda p, **kw: ed.drop_path(x, p, groups=x.shape[1], **kw),
        "path_list": lambda p, **kw: ed.drop_path([x, x], p, **kw),
        "layer": lambda p, **kw: ed.drop_layer(x, x * 2, p, **kw),
    }


@pytest.mark.parametrize("op", ["neuron", "channel", "path", "path_list", "layer"])
def test_identity_in_eval_and_at_p0(op):
    x = nonzero_randn((3, 4, 5, 5))
    fn = _all_ops(x)[op]
    expected = {"path_list": torch.cat([x, x], 1), "layer": x * 3}.get(op, x)
    assert torch.equal(fn(0.7, training=False), expected)
    assert torch.equal(fn(0.0), expected)


@pytest.mark.parametrize("op", ["neuron", "channel", "path", "path_list"])
def test_p1_drops_everything_without_nan(op):
    x = nonzero_randn((3, 4, 5, 5))
    x[0, 0, 0, 0] = float("inf")
    x = x.requires_grad_()
    y = _all_ops(x)[op](1.0, seed=0)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_p1_drop_layer_is_the_shortcut():
    branch = torch.full((3, 4), float("inf"), requires_grad=True)
    shortcut = torch.randn(3, 4, requires_grad=True)
    y = ed.drop_layer(branch, shortcut, 1.0, seed=0)
    assert torch.equal(y, shortcut)
    y.sum().backward()
    assert torch.equal(branch.grad, torch.zeros_like(branch)) and torch.equal(shortcut.grad, torch.ones_like(shortcut))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)])
def test_empty_tensors(shape):
    x = torch.randn(shape, requires_grad=True)
    for y in (ed.drop_neuron(x, 0.5), ed.drop_channel(x, 0.5), ed.drop_layer(x, x, 0.5)):
        assert y.shape == x.shape and y.numel() == 0
    assert ed.drop_path([x, x], 0.5).shape == (shape[0], 2 * shape[1], *shape[2:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_fp32_math(dtype):
    x = nonzero_randn((4, 6, 5, 5), dtype)
    y = ed.drop_neuron(x, 0.3, seed=5)
    assert y.dtype == dtype
    keep = y != 0
    assert torch.equal(y, torch.where(keep, (x.float() * scale_of(0.3)).to(dtype), 0))
    y = ed.drop_channel(x, 0.3, seed=5)
    assert torch.equal(y, torch.where(y != 0, (x.float() * scale_of(0.3)).to(dtype), 0))


# ---------------------------------------------------------------------------- gradcheck


def test_gradcheck_float64():
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ed.drop_neuron(t, 0.4, seed=1), (x,))
    assert torch.autograd.gradcheck(lambda t: ed.drop_channel(t, 0.4, seed=1), (x,))
    assert torch.autograd.gradcheck(lambda t: ed.drop_path(t, 0.4, groups=2, seed=1), (x,))
    assert torch.autograd.gradcheck(lambda t, u: ed.drop_path([t, u], 0.4, seed=1), (x, b))
    assert torch.autograd.gradcheck(lambda t, u: ed.drop_layer(t, u, 0.4, seed=1), (x, s))
    assert torch.autograd.gradgradcheck(lambda t: ed.drop_neuron(t, 0.4, seed=1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ed.drop_channel(t, 0.4, seed=1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ed.drop_path(t, 0.4, groups=2, mode="batch", seed=1), (x,))
    assert torch.autograd.gradgradcheck(lambda t, u: ed.drop_path([t, u], 0.4, seed=1), (x, b))
    assert torch.autograd.gradgradcheck(lambda t, u: ed.drop_layer(t, u, 0.4, seed=1), (x, s))


# ---------------------------------------------------------------------------- non-finite and negative inputs


def _special_values(shape):
    """Negative values, infinities and NaNs, so a dropped unit must be written, not multiplied by 0."""
    x = -torch.rand(shape) - 1
    x.view(-1)[::7] = float("inf")
    x.view(-1)[3::11] = float("nan")
    return x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropped_neurons_are_positive_zeros(layout, dtype):
    """The CPU fallback and-s the dropped elements' bits with zero (``masks.zero_dropped_elements``)."""
    x = _special_values((4, 6, 3, 5)).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y = ed.drop_neuron(x, 0.5, seed=8)
    keep = masks.neuron_keep(x.numel(), torch.tensor(8), 0.5).view(x.shape)
    int_type = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert torch.equal(y.view(int_type)[~keep], torch.zeros_like(y.view(int_type)[~keep]))
    torch.testing.assert_close(y[keep], (x * scale_of(0.5))[keep], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["channel", "path", "path_list"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dropped_units_are_positive_zeros(op, layout):
    x = _special_values((6, 8, 3, 3))
    if layout == "channels_last":  # the dropped rows are strided: the fallback's other zeroing path
        x = x.to(memory_format=torch.channels_last)
    if op == "channel":
        y, units = ed.drop_channel(x, 0.5, seed=2), (6, 8)
    elif op == "path":
        y, units = ed.drop_path(x, 0.5, groups=4, seed=2), (6, 4)
    else:
        y, units = ed.drop_path(list(x.split([4, 4], 1)), 0.5, seed=2), (6, 2)
    rows = y.reshape(*units, -1)
    dropped = (rows.view(torch.int32) == 0).all(-1)  # +0.0 has the all-zero bit pattern
    kept_rows = x.reshape(*units, -1)[~dropped] * scale_of(0.5)
    assert 0 < dropped.sum() < dropped.numel()
    torch.testing.assert_close(rows[~dropped], kept_rows, equal_nan=True, rtol=0, atol=0)


def test_dropped_branch_leaves_the_shortcut_bit_for_bit():
    branch = _special_values((16, 3, 2, 2))
    shortcut = torch.randn(16, 3, 2, 2)
    shortcut[0] = -0.0
    y = ed.drop_layer(branch, shortcut, 0.5, seed=9)
    same = (y.view(torch.int32) == shortcut.view(torch.int32)).flatten(1).all(1)
    assert 0 < same.sum() < 16
    assert not y[same].isnan().any()


@pytest.mark.parametrize("op", ["neuron", "channel", "path", "path_list", "layer"])
def test_channels_last_stays_channels_last(op):
    x = nonzero_randn((3, 8, 5, 4), layout="channels_last").requires_grad_()
    y = _all_ops(x)[op](0.5, seed=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
