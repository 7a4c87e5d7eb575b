"""ConvBlock and the norm-act-drop modules: block order, norms, initialization, BatchNorm
compatibility (running statistics, state dicts), fused against eager, errors, memory."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effdrop_triton as ed
from effdrop_triton.testing import saved_for_backward
from effdrop_triton.norm_act import BatchNormActDrop2d, GroupNormActDrop

ORDERS = {
    0: ["norm", "conv"],
    1: ["norm", "conv", "drop"],
    2: ["drop", "conv", "norm"],
    3: ["conv", "drop", "norm"],
}


@pytest.mark.parametrize("block_type", range(4))
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_block_order_and_norm(block_type, norm):
    block = ed.ConvBlock(8, 16, 3, block_type=block_type, norm=norm, gn_groups=4, drop_rate=0.2, padding=1)
    assert [name for name, _ in block.named_children()] == ORDERS[block_type]
    expected_norm = nn.BatchNorm2d if norm == "bn" else nn.GroupNorm
    norms = [m for m in block.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 1 and isinstance(norms[0], expected_norm)
    # the norm sits on the conv input for types 0/1, on its output for types 2/3
    norm_channels = block.norm.num_features if norm == "bn" else block.norm.num_channels
    assert norm_channels == (8 if block_type < 2 else 16)
    assert block.norm.act
    if block_type == 0:  # the dropout is the norm module's last step
        assert block.norm.drop_rate == 0.2 and not hasattr(block, "drop")
    else:
        assert block.norm.drop_rate == 0.0 and isinstance(block.drop, ed.DropChannel) and block.drop.p == 0.2
    assert block.drop_rate == 0.2


@pytest.mark.parametrize("block_type", range(4))
@pytest.mark.parametrize("fused", [True, False])
def test_block_matches_composition_of_its_parts(block_type, fused):
    """The block equals its parts applied in its order, with PyTorch's own norm and ReLU and the
    dropout mask of the standalone op for the same seed."""
    torch.manual_seed(0)
    block = ed.ConvBlock(6, 10, 3, block_type=block_type, drop_type="neuron", drop_rate=0.4, padding=1, fused=fused)
    x = torch.randn(3, 6, 7, 7)
    reference_bn = nn.BatchNorm2d(block.norm.num_features)
    reference_bn.load_state_dict(block.norm.state_dict())
    torch.manual_seed(1)
    out = block(x)

    torch.manual_seed(1)  # the block draws one seed, in block order
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    mask_of = lambda t: ed.drop_neuron(torch.ones_like(t), 0.4, seed=seed)  # noqa: E731
    norm_relu = lambda t: F.relu(reference_bn(t))  # noqa: E731
    conv = block.conv
    if block_type == 0:
        y = norm_relu(x)
        expected = conv(y * mask_of(y))
    elif block_type == 1:
        y = conv(norm_relu(x))
        expected = y * mask_of(y)
    elif block_type == 2:
        expected = norm_relu(conv(x * mask_of(x)))
    else:
        y = conv(x)
        expected = norm_relu(y * mask_of(y))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.norm.running_mean, reference_bn.running_mean)
    torch.testing.assert_close(block.norm.running_var, reference_bn.running_var)


def test_fused_and_eager_block_agree_with_gradients():
    torch.manual_seed(0)
    fused = ed.ConvBlock(8, 8, 3, block_type=0, drop_rate=0.3, padding=1)
    eager = ed.ConvBlock(8, 8, 3, block_type=0, drop_rate=0.3, padding=1, fused=False)
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(4, 8, 6, 6)
    grads = []
    for block in (fused, eager):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        out = block(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append((out, xi.grad, block.conv.weight.grad, block.norm.weight.grad, block.norm.bias.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fused_block_under_autocast_matches_eager(conv_bias):
    """Two type-0 blocks under bf16 autocast (the second gets the first's bf16 output): the fused
    block's convolution computes in bf16 like F.conv2d's, and its backward too, with fp32
    parameter gradients."""
    torch.manual_seed(0)
    fused = nn.Sequential(*(ed.ConvBlock(8, 8, 3, block_type=0, drop_rate=0.3, padding=1, bias=conv_bias)
                            for _ in range(2)))
    eager = copy.deepcopy(fused)
    ed.set_fused(eager, False)
    x = torch.randn(4, 8, 6, 6)
    results = []
    for model in (fused, eager):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xi)
        assert out.dtype == torch.bfloat16
        out.float().backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append([out.float(), xi.grad] + [p.grad for p in model.parameters()])
    for p in fused.parameters():
        assert p.grad.dtype == torch.float32
    for a, b in zip(*results):  # the paths round differently in bf16: up to one bf16 ulp (1/32 at |value| ~ 4)
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=4e-2)


def test_fused_conv_needs_one_dtype_outside_autocast():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="one dtype outside autocast.*torch.float32, torch.bfloat16"):
        ed.norm_act_drop_conv2d(x, None, None, None, None, torch.randn(4, 4, 3, 3, dtype=torch.bfloat16), p=0.2)


def test_initialization():
    torch.manual_seed(0)
    block = ed.ConvBlock(64, 128, 3, bias=True, padding=1)
    fan_out = 128 * 9
    std = block.conv.weight.std().item()
    assert abs(std - (2.0 / fan_out) ** 0.5) < 0.05 * (2.0 / fan_out) ** 0.5  # Kaiming normal, fan_out, ReLU gain
    assert torch.equal(block.conv.bias, torch.zeros(128))
    assert torch.equal(block.norm.weight, torch.ones(64)) and torch.equal(block.norm.bias, torch.zeros(64))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("fused", [True, False])
def test_batchnorm_module_tracks_running_stats_like_pytorch(momentum, fused):
    """Without ReLU and dropout the module is nn.BatchNorm2d: same outputs, same running stats."""
    torch.manual_seed(0)
    ours = BatchNormActDrop2d(5, momentum=momentum, act=False, fused=fused)
    theirs = nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-0.5, 0.5)
    theirs.load_state_dict(ours.state_dict())
    for step in range(4):
        x = torch.randn(6, 5, 4, 3) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_block_type_0_calls_its_norm_module_once(norm):
    """The fused norm-ReLU-drop-conv goes through the norm module's forward: its hooks see the call and the
    batch is counted there, once per training call, as nn.BatchNorm2d counts it."""
    block = ed.ConvBlock(4, 6, 3, block_type=0, norm=norm, gn_groups=2, drop_rate=0.2, padding=1)
    calls = []
    block.norm.register_forward_hook(lambda module, args, out: calls.append((args[0].shape, out.shape)))
    x = torch.randn(3, 4, 5, 5)
    out = block(x)
    assert calls == [((3, 4, 5, 5), (3, 6, 5, 5))] and out.shape == (3, 6, 5, 5)
    if norm == "bn":
        assert int(block.norm.num_batches_tracked) == 1
        block(x)
        block.eval()(x)
        assert int(block.norm.num_batches_tracked) == 2


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_norm_module_with_a_conv_that_does_not_fuse(padding_mode):
    """A conv with another padding mode runs on the fused norm's output: the same values and gradients as
    the eager composition (the same mask for the same generator state)."""
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode=padding_mode)
    outs, grads = [], []
    for fused in (True, False):
        norm = BatchNormActDrop2d(4, drop_rate=0.3, fused=fused)
        x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
        torch.manual_seed(7)
        out = norm(x, conv=conv)
        out.sum().backward()
        outs.append(out.detach()), grads.append(x.grad)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_norm_module_rejects_outer_levels_with_one_message():
    for drop_type in ("path", 3, "dropblock"):
        with pytest.raises(ValueError, match=r"inside a norm/conv block must be 'neuron' \(0\) or 'channel' \(1\), got"):
            BatchNormActDrop2d(4, drop_type=drop_type)


def test_state_dict_loads_both_ways():
    ours = BatchNormActDrop2d(7, drop_rate=0.2, track_stats=True)
    ours(torch.randn(4, 7, 3, 3))
    theirs = nn.BatchNorm2d(7)
    theirs.load_state_dict(ours.state_dict())  # strict: no extra keys
    back = BatchNormActDrop2d(7)
    back.load_state_dict(theirs.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    gn = GroupNormActDrop(2, 6)
    nn.GroupNorm(2, 6).load_state_dict(gn.state_dict())
    gn.load_state_dict(nn.GroupNorm(2, 6).state_dict())


def test_groupnorm_module_matches_pytorch():
    torch.manual_seed(0)
    ours = GroupNormActDrop(3, 6, act=False)
    theirs = nn.GroupNorm(3, 6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-0.5, 0.5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 5, 5) * 3 + 1
    torch.testing.assert_close(ours(x), theirs(x))


def test_set_fused_switches_every_norm():
    model = nn.Sequential(ed.ConvBlock(4, 4, 3, block_type=0), ed.ConvBlock(4, 4, 3, block_type=2))
    ed.set_fused(model, False)
    assert all(not m.fused for m in model.modules() if isinstance(m, (BatchNormActDrop2d, GroupNormActDrop)))
    assert not model[0].fused


def test_block_saves_at_most_half_of_eager_composition():
    """ConvBlock(block_type=0) keeps the block input and per-channel statistics; the eager
    BatchNorm2d + ReLU + Dropout2d + Conv2d keeps the norm input, the ReLU output and the conv input."""
    torch.manual_seed(0)
    block = ed.ConvBlock(32, 32, 3, block_type=0, drop_rate=0.2, padding=1)
    eager = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout2d(0.2), nn.Conv2d(32, 32, 3, padding=1, bias=False))
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    ours, theirs = saved_for_backward(block, x)[1], saved_for_backward(eager, x)[1]
    assert ours <= 0.5 * theirs, (ours, theirs)
    assert ours <= x.numel() * x.element_size() + block.conv.weight.numel() * 4 + 1024


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_type=4), "block_type"),
    (dict(block_type=True), "block_type"),
    (dict(norm="ln"), "norm"),
    (dict(norm="gn", gn_groups=3), "gn_groups=3"),
    (dict(drop_type="path"), "drop_type"),
    (dict(drop_type="layer"), "drop_type"),
    (dict(drop_type=7), "drop_type"),
    (dict(drop_rate=1.5), "drop_rate"),
])
def test_block_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ed.ConvBlock(8, 16, 3, **kwargs)


def test_groupnorm_groups_must_divide_channels():
    with pytest.raises(ValueError, match="num_groups=4"):
        GroupNormActDrop(4, 6)


@pytest.mark.parametrize("block_type", [0, 2])
def test_convert_sync_batchnorm_keeps_relu_and_dropout(block_type):
    """PyTorch's conversion would leave a bare SyncBatchNorm; ours keeps norm, ReLU and dropout.
    Without an initialised process group SyncBatchNorm normalizes like BatchNorm2d."""
    from effdrop_triton.models import wrn

    torch.manual_seed(0)
    model = wrn(depth=10, widen_factor=1, block_type=block_type, drop_rate=0.3)
    model(torch.randn(4, 3, 32, 32))  # running statistics away from their initial values
    ed.track_variance_shift(model)
    reference = copy.deepcopy(model)
    converted = ed.convert_sync_batchnorm(model)
    assert not any(isinstance(m, BatchNormActDrop2d) for m in converted.modules())
    syncs = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert syncs and all(isinstance(m, ed.SyncBatchNormActDrop2d) for m in syncs)
    assert [m.track_stats for m in syncs] == [m.track_stats for m in reference.modules()
                                              if isinstance(m, BatchNormActDrop2d)]
    assert converted.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(4, 3, 32, 32)
    for training in (True, False):
        reference.train(training), converted.train(training)
        torch.manual_seed(3)
        expected = reference(x)
        torch.manual_seed(3)
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_type", [0, 2])
def test_block_compiles_fullgraph_with_inductor(block_type):
    """No graph break, and compiled forward and gradients equal eager ones (the fused ops are
    opaque custom ops; type 0's backward rebuilds the conv input through one as well)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch.manual_seed(0)
    block = ed.ConvBlock(6, 6, 3, block_type=block_type, drop_rate=0.3, padding=1)
    x = torch.randn(3, 6, 5, 5)
    results = []
    with inductor_config.patch(fallback_random=True):
        for run in (block, torch.compile(block, fullgraph=True)):
            xi = x.clone().requires_grad_()
            torch.manual_seed(4)
            out = run(xi)
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
            results.append([out.detach(), xi.grad] + [p.grad.clone() for p in block.parameters()])
            block.zero_grad()
    for compiled, eager in zip(*reversed(results)):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
