"""The randomness contract: a mask is a pure function of (shape, p, seed); seed=None follows
PyTorch's default generator, so manual_seed, checkpointing and torch.compile reproduce it."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import effdrop_triton as ed
from conftest import nonzero_randn


class AllLevels(torch.nn.Module):
    """A small net with every level, each drawing its seed from the default generator."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.neuron = ed.DropNeuron(0.3)
        self.channel = ed.DropChannel(0.3)
        self.path = ed.DropPath(0.3, groups=4)
        self.path_list = ed.DropPath(0.3, mode="batch")
        self.layer = ed.DropLayer(0.3)

    def forward(self, x):
        h = self.channel(self.neuron(self.conv(x)))
        h = self.path(h)
        h = self.path_list([h[:, :3], h[:, 3:]])
        return self.layer(h.tanh(), h)


@pytest.mark.parametrize("op", [
    lambda x, s: ed.drop_neuron(x, 0.5, seed=s),
    lambda x, s: ed.drop_channel(x, 0.5, seed=s),
    lambda x, s: ed.drop_path(x, 0.5, groups=2, seed=s),
    lambda x, s: ed.drop_layer(x, x, 0.5, seed=s),
])
def test_same_seed_same_mask_other_seed_other_mask(op):
    x = nonzero_randn((8, 4, 5, 5))
    assert torch.equal(op(x, 123), op(x, 123))
    assert torch.equal(op(x, 123), op(x, torch.tensor(123)))
    assert not torch.equal(op(x, 123), op(x, 124))
    # the mask depends on the shape, p and seed only, not on the values
    assert torch.equal(op(x, 5) == 0, op(x * 3, 5) == 0)


def test_manual_seed_reproduces_seed_none():
    net = AllLevels()
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(7)
    first = net(x)
    torch.manual_seed(7)
    assert torch.equal(net(x), first)
    assert not torch.equal(net(x), first)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recomputes_the_same_masks(use_reentrant):
    net = AllLevels()
    x = torch.randn(4, 3, 6, 6, requires_grad=True)  # the reentrant variant needs an input that requires grad
    torch.manual_seed(3)
    net(x).square().sum().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.manual_seed(3)
    checkpoint(net, x, use_reentrant=use_reentrant).square().sum().backward()
    for p, g in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-6)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    net = AllLevels()
    x = torch.randn(4, 3, 6, 6)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.manual_seed(11)
    eager_out = net(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.manual_seed(11)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out)
    for p, g in zip(net.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_compile_inductor_fullgraph_with_fallback_random():
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    net = AllLevels()
    x = torch.randn(2, 3, 4, 4)
    torch.manual_seed(5)
    eager_out = net(x)
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(net, fullgraph=True)
        torch.manual_seed(5)
        out = compiled(x)
    torch.testing.assert_close(out, eager_out)
