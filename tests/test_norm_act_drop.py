"""The fused norm -> affine -> ReLU -> dropout op on the PyTorch fallback: forward and every gradient
against the eager composition fed with the same mask, running statistics, dtypes, layouts,
awkward shapes, errors, saved-for-backward bytes, gradcheck."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import effdrop_triton as ed
from effdrop_triton.testing import saved_for_backward
from effdrop_triton.functional import norm_act_drop, norm_act_drop_conv2d
from conftest import nonzero_randn


@pytest.fixture(autouse=True)
def _fallback():
    with ed.use_backend("torch"):
        yield


def same_mask(x, drop_type, p, seed, training=True):
    """The standalone op's mask (0 or 1 / (1 - p)) for x's shape and the seed."""
    ones = torch.ones(x.shape, dtype=x.dtype)
    op = ed.drop_channel if drop_type in ("channel", 1) else ed.drop_neuron
    return op(ones, p, training=training, seed=seed)


def eager(x, weight, bias, running_mean, running_var, *, norm="bn", num_groups=None, training=True,
          use_batch_stats=None, momentum=0.1, eps=1e-5, act=True, drop_type="channel", p=0.0, seed=None):
    """PyTorch's norm, ReLU, then the standalone op's mask: the reference composition."""
    if norm == "bn":
        batch = use_batch_stats if use_batch_stats is not None else (training or running_mean is None)
        y = F.batch_norm(x, running_mean, running_var, weight, bias, batch, momentum, eps)
    else:
        y = F.group_norm(x, num_groups, weight, bias, eps)
    if act:
        y = F.relu(y)
    return y * same_mask(x, drop_type, p, seed, training).to(y.dtype)


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def forward_backward(fn, x, weight, bias, grad, **kw):
    x, weight, bias = leaves(x, weight, bias)
    out = fn(x, weight, bias, **kw)
    out.backward(grad)
    return [out.detach(), x.grad] + [t.grad for t in (weight, bias) if t is not None]


def make_case(shape, dtype=torch.float32, layout="contiguous", affine=True, generator_seed=0):
    x = nonzero_randn(shape, dtype, layout, generator_seed=generator_seed) * 1.5 + 0.3
    C = shape[1]
    g = torch.Generator().manual_seed(generator_seed + 1)
    weight = (torch.rand(C, generator=g) + 0.5) * torch.where(torch.rand(C, generator=g) < 0.2, -1.0, 1.0)
    bias = torch.randn(C, generator=g) * 0.5
    grad = nonzero_randn(shape, dtype, layout, generator_seed=generator_seed + 2)
    if not affine:
        weight = bias = None
    return x, weight, bias, grad


def assert_close_all(actual, expected, **tol):
    assert len(actual) == len(expected)
    for name, a, e in zip(["output", "grad_x", "grad_weight", "grad_bias"], actual, expected):
        torch.testing.assert_close(a, e, msg=lambda m: f"{name}: {m}", **tol)


CASES = [  # (norm, shape, num_groups)
    ("bn", (4, 6, 5, 7), None),
    ("gn", (3, 6, 5, 7), 3),
]


@pytest.mark.parametrize("norm,shape,num_groups", CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
@pytest.mark.parametrize("act", [True, False])
def test_matches_eager_composition_with_the_same_mask(norm, shape, num_groups, layout, drop_type, act):
    x, weight, bias, grad = make_case(shape, layout=layout)
    kw = dict(norm=norm, num_groups=num_groups, drop_type=drop_type, p=0.4, seed=1234, act=act)
    out = forward_backward(norm_act_drop, x, weight, bias, grad, **kw)
    ref = forward_backward(lambda *a, **k: eager(*a, None, None, **k), x, weight, bias, grad, **kw)
    assert_close_all(out, ref, rtol=1e-5, atol=1e-5)
    assert 0 < (out[0] == 0).sum() < out[0].numel()
    if layout == "channels_last":
        assert out[0].is_contiguous(memory_format=torch.channels_last)
        assert out[1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("norm,shape,num_groups", CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fallback_in_blocks_of_samples_is_bit_identical(monkeypatch, norm, shape, num_groups, layout, drop_type, dtype):
    """Large tensors run the fallback's elementwise passes a few samples at a time: the same numbers, bit for bit,
    forward and backward, as one pass over the whole tensor (here: one sample per block against one block)."""
    from effdrop_triton.ops import norm_act_drop as module

    x, weight, bias, grad = make_case(shape, dtype, layout)
    fn = lambda a, w, b: norm_act_drop(a, w, b, norm=norm, num_groups=num_groups, drop_type=drop_type, p=0.3,  # noqa: E731
                                       seed=5)
    whole = forward_backward(fn, x, weight, bias, grad)
    monkeypatch.setattr(module, "_BLOCK_ELEMENTS", 1)
    blocks = forward_backward(fn, x, weight, bias, grad)
    for a, b in zip(blocks, whole):
        assert a.stride() == b.stride() and torch.equal(a, b)


@pytest.mark.parametrize("drop_type", [0, 1])
def test_numeric_drop_types_are_the_original_numbering(drop_type):
    x, weight, bias, _ = make_case((2, 4, 3, 3))
    out = norm_act_drop(x, weight, bias, drop_type=drop_type, p=0.5, seed=9)
    named = norm_act_drop(x, weight, bias, drop_type=["neuron", "channel"][drop_type], p=0.5, seed=9)
    assert torch.equal(out, named)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("norm,shape,num_groups", CASES)
def test_without_affine_and_without_dropout(affine, norm, shape, num_groups):
    x, weight, bias, grad = make_case(shape, affine=affine)
    for kw in (dict(p=0.0), dict(p=0.5, training=False) if norm == "gn" else dict(p=0.0, act=False)):
        kw.update(norm=norm, num_groups=num_groups)
        out = forward_backward(norm_act_drop, x, weight, bias, grad, **kw)
        ref = forward_backward(lambda *a, **k: eager(*a, None, None, **k), x, weight, bias, grad, **kw)
        assert_close_all(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_running_statistics_follow_batchnorm2d_over_several_steps(layout, momentum):
    """momentum=None is the cumulative average, weighted by the device counter (nn.BatchNorm2d's)."""
    C = 5
    reference = nn.BatchNorm2d(C, momentum=momentum)
    running_mean, running_var = torch.zeros(C), torch.ones(C)
    batches = torch.zeros((), dtype=torch.int64)
    weight, bias = reference.weight.detach().clone(), reference.bias.detach().clone()
    for step in range(4):
        x = nonzero_randn((3, C, 4, 6), layout=layout, generator_seed=step) * (step + 1) + step
        batches += 1
        out = norm_act_drop(x, weight, bias, running_mean, running_var, momentum=momentum, act=False,
                            num_batches_tracked=batches)
        torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(running_mean, reference.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(running_var, reference.running_var, rtol=1e-6, atol=1e-7)
    # eval: the running statistics normalize, nothing is updated, dropout is off
    reference.eval()
    x, _, _, grad = make_case((2, C, 3, 3), generator_seed=7)
    before = running_mean.clone()
    out = forward_backward(norm_act_drop, x, weight, bias, grad, running_mean=running_mean, running_var=running_var,
                           training=False, p=0.5, act=False)
    x_ref, w_ref, b_ref = leaves(x, weight, bias)
    y_ref = F.batch_norm(x_ref, reference.running_mean, reference.running_var, w_ref, b_ref, training=False)
    y_ref.backward(grad)
    assert_close_all(out, [y_ref.detach(), x_ref.grad, w_ref.grad, b_ref.grad], rtol=1e-5, atol=1e-5)
    assert torch.equal(running_mean, before)


@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
def test_running_statistics_with_dropout_in_training(drop_type):
    """Frozen BatchNorm (use_batch_stats=False) while dropout trains; the eval path with p > 0."""
    x, weight, bias, grad = make_case((4, 6, 3, 5))
    running_mean, running_var = torch.randn(6) * 0.1, torch.rand(6) + 0.5
    for kw in (dict(training=True, use_batch_stats=False), dict(training=False)):
        kw.update(drop_type=drop_type, p=0.3, seed=11)
        fn = lambda a, w, b, **k: norm_act_drop(a, w, b, running_mean, running_var, **k)  # noqa: E731
        ref_fn = lambda a, w, b, **k: eager(a, w, b, running_mean, running_var, **k)  # noqa: E731
        assert_close_all(forward_backward(fn, x, weight, bias, grad, **kw),
                         forward_backward(ref_fn, x, weight, bias, grad, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm,shape,num_groups", [
    ("bn", (2, 1, 5, 5), None),  # C = 1
    ("bn", (3, 4, 1, 97), None),  # prime H * W
    ("bn", (5, 3), None),  # (N, C): BatchNorm1d
    ("bn", (2, 3, 11), None),  # (N, C, L)
    ("gn", (1, 6, 1, 97), 2),  # N = 1, prime H * W
    ("gn", (1, 4, 3, 3), 4),  # one channel per group
    ("gn", (2, 5, 3, 3), 1),  # one group (LayerNorm-like)
    ("gn", (3, 1, 4, 4), 1),  # C = 1
])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_awkward_shapes(norm, shape, num_groups, layout):
    if len(shape) < 4 and layout == "channels_last":
        layout = "contiguous"
    x, weight, bias, grad = make_case(shape, layout=layout)
    kw = dict(norm=norm, num_groups=num_groups, p=0.3, seed=3)
    out = forward_backward(norm_act_drop, x, weight, bias, grad, **kw)
    ref = forward_backward(lambda *a, **k: eager(*a, None, None, **k), x, weight, bias, grad, **kw)
    assert_close_all(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm,shape,num_groups", CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
def test_low_precision_by_the_flash_attention_rule(dtype, norm, shape, num_groups, layout, drop_type):
    """|fused - ref_fp32| <= 2 |eager_same_dtype - ref_fp32| + atol, for the output and every gradient."""
    x, weight, bias, grad = make_case(shape, dtype, layout)
    kw = dict(norm=norm, num_groups=num_groups, drop_type=drop_type, p=0.3, seed=21)
    out = forward_backward(norm_act_drop, x, weight, bias, grad, **kw)
    same = forward_backward(lambda *a, **k: eager(*a, None, None, **k), x, weight, bias, grad, **kw)
    ref = forward_backward(lambda *a, **k: eager(*a, None, None, **k), x.float(), weight, bias, grad.float(), **kw)
    atol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for name, a, s, r in zip(["output", "grad_x", "grad_weight", "grad_bias"], out, same, ref):
        assert a.dtype == s.dtype
        error = (a.float() - r).abs().max().item()
        bound = 2 * (s.float() - r).abs().max().item() + atol
        assert error <= bound, f"{name}: error {error:.3g} > {bound:.3g}"
    if layout == "channels_last":
        assert out[0].is_contiguous(memory_format=torch.channels_last)


def test_statistics_are_fp32_and_safe_for_large_offsets():
    """A large common offset does not cancel (two-pass / Chan statistics, never sum of squares)."""
    x = (torch.randn(4, 3, 8, 8, dtype=torch.float64) + 1e4).float()
    for norm, groups in (("bn", None), ("gn", 3)):
        out, (mean, var) = norm_act_drop(x, norm=norm, num_groups=groups, act=False, input_stats=True)
        dims = (0, 2, 3)
        torch.testing.assert_close(var.double(), x.double().var(dims, unbiased=False), rtol=1e-4, atol=0)
        torch.testing.assert_close(mean.double(), x.double().mean(dims), rtol=1e-7, atol=0)
        assert mean.dtype == var.dtype == torch.float32
        ref = F.batch_norm(x.double(), None, None, training=True) if norm == "bn" else F.group_norm(x.double(), 3)
        # x * scale + shift carries x's own rounding (ulp 1e-3 at 1e4), as PyTorch's CPU kernel does
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=3e-3)
    _, (mean, var) = norm_act_drop(x.half() - 1e4 + 3, input_stats=True)
    assert mean.dtype == torch.float32


@pytest.mark.parametrize("norm,num_groups", [("bn", None), ("gn", 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_input_stats(norm, num_groups, training, layout):
    x, weight, bias, _ = make_case((3, 4, 5, 6), layout=layout)
    running = (torch.zeros(4), torch.ones(4)) if norm == "bn" else (None, None)
    y, (mean, var) = norm_act_drop(x, weight, bias, *running, norm=norm, num_groups=num_groups, training=training,
                                   input_stats=True)
    var_ref, mean_ref = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_ref, rtol=1e-5, atol=1e-6)
    assert not mean.requires_grad and mean.shape == (4,)
    assert torch.equal(y, norm_act_drop(x, weight, bias, *[t.clone() if t is not None else None for t in running],
                                        norm=norm, num_groups=num_groups, training=training))


def _conv_case(layout="contiguous", conv_bias=True):
    x, weight, bias, _ = make_case((4, 6, 7, 9), layout=layout)
    g = torch.Generator().manual_seed(5)
    conv_weight = torch.randn(8, 3, 3, 3, generator=g) * 0.2
    cbias = torch.randn(8, generator=g) if conv_bias else None
    return x, weight, bias, conv_weight, cbias


@pytest.mark.parametrize("norm,num_groups", [("bn", None), ("gn", 3)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_conv_variant_matches_the_composition(norm, num_groups, layout, conv_bias):
    x, weight, bias, conv_weight, cbias = _conv_case(layout, conv_bias)
    kw = dict(norm=norm, num_groups=num_groups, p=0.3, seed=17)
    conv = dict(stride=(2, 1), padding=1, dilation=1, groups=2)
    results = []
    for fused in (True, False):
        xs, w, b, cw, cb = leaves(x, weight, bias, conv_weight, cbias)
        if fused:
            out = norm_act_drop_conv2d(xs, w, b, None, None, cw, cb, **conv, **kw)
        else:
            out = F.conv2d(eager(xs, w, b, None, None, **kw), cw, cb, **conv)
        out.backward(torch.ones_like(out) + out.detach() * 0.1)
        results.append([out.detach(), xs.grad, w.grad, b.grad, cw.grad] + ([cb.grad] if conv_bias else []))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_conv_variant_first_order_gradient_under_create_graph():
    """``create_graph=True`` runs backward with grad enabled: the fallback's eager shortcut must step aside for the
    ops, which give the same first-order gradient (and refuse only a second one)."""
    x, weight, bias, conv_weight, _ = _conv_case()
    fn = lambda a, w: norm_act_drop_conv2d(a, w, bias, None, None, conv_weight, None, padding=1, groups=2,  # noqa: E731
                                           p=0.2, seed=3)
    a, w = leaves(x, weight)
    out = fn(a, w)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    expected = torch.autograd.grad((out * grad).sum(), (a, w))
    a, w = leaves(x, weight)
    got = torch.autograd.grad((fn(a, w) * grad).sum(), (a, w), create_graph=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="double backward"):
        got[0].sum().backward()


def test_conv_variant_padding_same_and_input_stats():
    x, weight, bias, conv_weight, cbias = _conv_case()
    out, (mean, _) = norm_act_drop_conv2d(x, weight, bias, None, None, conv_weight[:, :3].repeat(1, 2, 1, 1), cbias,
                                          padding="same", input_stats=True)
    assert out.shape == (4, 8, 7, 9) and mean.shape == (6,)
    with pytest.raises(ValueError, match="asymmetric"):
        norm_act_drop_conv2d(x, weight, bias, None, None, torch.randn(8, 6, 2, 2), padding="same")


def _memory_inputs(layout="contiguous"):
    x = torch.randn(16, 32, 16, 16, requires_grad=True)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    bn = nn.BatchNorm2d(32)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    return x, bn, conv


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
def test_saved_bytes_of_the_fused_op_and_its_conv_variant(layout, drop_type):
    x, bn, conv = _memory_inputs(layout)
    drop = nn.Dropout2d(0.2) if drop_type == "channel" else nn.Dropout(0.2)
    args = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    kw = dict(p=0.2, drop_type=drop_type)
    eager_bytes = saved_for_backward(lambda t: drop(F.relu(bn(t))), x)[1]
    eager_conv_bytes = saved_for_backward(lambda t: conv(drop(F.relu(bn(t)))), x)[1]
    fused_bytes = saved_for_backward(lambda t: norm_act_drop(t, *args, **kw), x)[1]
    fused_conv_bytes = saved_for_backward(lambda t: norm_act_drop_conv2d(t, *args, conv.weight, **kw), x)[1]
    activation = x.numel() * x.element_size()
    weights = conv.weight.numel() * 4
    # the input and per-channel constants only: nothing else per element
    assert fused_bytes <= activation + 1024
    assert fused_conv_bytes <= activation + weights + 1024
    assert fused_bytes <= 0.5 * eager_bytes + 1024
    assert fused_conv_bytes <= 0.5 * eager_conv_bytes, (fused_conv_bytes, eager_conv_bytes)


@pytest.mark.parametrize("norm,num_groups", [("bn", None), ("gn", 2)])
@pytest.mark.parametrize("drop_type", ["channel", "neuron"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_fp64(norm, num_groups, drop_type, training):
    x, weight, bias, _ = make_case((3, 4, 3, 2), torch.float64)
    weight, bias = weight.double(), bias.double()
    running = (torch.randn(4, dtype=torch.float64) * 0.1, torch.rand(4, dtype=torch.float64) + 0.5) if norm == "bn" else (None, None)
    kw = dict(norm=norm, num_groups=num_groups, drop_type=drop_type, p=0.3, seed=8, training=training,
              use_batch_stats=True if norm == "bn" and training else None)

    def fn(a, w, b):
        return norm_act_drop(a, w, b, *[None if t is None else t.clone() for t in running], **kw)

    assert torch.autograd.gradcheck(fn, leaves(x, weight, bias))


def test_gradcheck_fp64_conv_variant():
    x, weight, bias, conv_weight, cbias = _conv_case()
    x, weight, bias, conv_weight, cbias = leaves(*(t.double()[:2] if t is x else t.double()
                                                   for t in (x, weight, bias, conv_weight, cbias)))
    fn = lambda a, w, b, cw, cb: norm_act_drop_conv2d(a, w, b, None, None, cw, cb, padding=1, groups=2,  # noqa: E731
                                                      p=0.3, seed=2)
    assert torch.autograd.gradcheck(fn, (x, weight, bias, conv_weight, cbias))


def test_double_backward_raises_a_clear_error():
    x, weight, bias, _ = make_case((2, 4, 3, 3))
    x, weight, bias = leaves(x, weight, bias)
    y = norm_act_drop(x, weight, bias, p=0.5, seed=1)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_seed_none_follows_torch_manual_seed():
    x, weight, bias, _ = make_case((4, 8, 3, 3))
    torch.manual_seed(3)
    a = norm_act_drop(x, weight, bias, p=0.5)
    torch.manual_seed(3)
    b = norm_act_drop(x, weight, bias, p=0.5)
    assert torch.equal(a, b)


def test_compiles_without_graph_breaks():
    x, weight, bias, grad = make_case((2, 4, 3, 3))
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    fn = lambda a, w, b: norm_act_drop(a, w, b, running_mean, running_var, p=0.5, seed=4)  # noqa: E731
    expected = forward_backward(fn, x, weight, bias, grad)
    torch._dynamo.reset()
    running_mean.zero_(), running_var.fill_(1)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert_close_all(forward_backward(compiled, x, weight, bias, grad), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_mean, torch.zeros(4).mul_(0.9).add_(x.mean((0, 2, 3)), alpha=0.1))


def test_empty_group_norm_batch():
    x = torch.empty(0, 4, 3, 3, requires_grad=True)
    y = norm_act_drop(x, norm="gn", num_groups=2, p=0.5)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


ERRORS = [
    (dict(p=1.5), ValueError, "p must be in"),
    (dict(p=float("nan")), ValueError, "p must be in"),
    (dict(p="0.1"), TypeError, "p must be a real number"),
    (dict(norm="ln"), ValueError, "norm must be one of"),
    (dict(drop_type="path"), ValueError, "drop_type must be one of"),
    (dict(drop_type=2), ValueError, "drop_type must be one of"),
    (dict(weight=torch.ones(3)), ValueError, r"weight must have shape \(4,\)"),
    (dict(bias=torch.ones(4, 1)), ValueError, r"bias must have shape \(4,\)"),
    (dict(running_mean=torch.zeros(5), running_var=torch.ones(5)), ValueError, r"running_mean must have shape \(4,\)"),
    (dict(running_mean=torch.zeros(4)), ValueError, "given together"),
    (dict(use_batch_stats=False), ValueError, "needs running_mean and running_var"),
    (dict(norm="gn", num_groups=3), ValueError, "num_groups must be a positive int dividing"),
    (dict(norm="gn"), ValueError, "num_groups must be a positive int dividing"),
    (dict(num_groups=2), ValueError, "applies to norm='gn' only"),
    (dict(norm="gn", num_groups=2, running_mean=torch.zeros(4), running_var=torch.ones(4)), ValueError, "no running"),
    (dict(weight=torch.ones(4, dtype=torch.int64)), TypeError, "weight must be a floating-point tensor"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(eps=-1.0), ValueError, "eps must be"),
    (dict(act="yes"), TypeError, "act must be a bool"),
    (dict(momentum=None), ValueError, "momentum=None .* needs num_batches_tracked"),
    (dict(momentum=None, num_batches_tracked=torch.tensor(1.0)), ValueError, "num_batches_tracked"),
]


@pytest.mark.parametrize("kwargs,error,match", ERRORS)
def test_errors(kwargs, error, match):
    x = torch.randn(2, 4, 3, 3)
    kwargs = dict(kwargs)
    positional = [kwargs.pop(name, None) for name in ("weight", "bias", "running_mean", "running_var")]
    with pytest.raises(error, match=match):
        norm_act_drop(x, *positional, **kwargs)


def test_input_errors():
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        norm_act_drop(torch.ones(2, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least 2 dims"):
        norm_act_drop(torch.randn(5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm_act_drop(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="input channels"):
        norm_act_drop_conv2d(torch.randn(2, 4, 5, 5), None, None, None, None, torch.randn(3, 3, 3, 3))
