"""Modules: thin wrappers, identity in eval and at p=0, extra_repr, nn.Sequential, make_drop."""

import pytest
import torch
from torch import nn

import effdrop_triton as ed


@pytest.mark.parametrize("cls", [ed.DropNeuron, ed.DropChannel])
def test_eval_and_p0_are_identity(cls):
    x = torch.randn(2, 4, 3, 3)
    assert cls(0.5).eval()(x) is x
    assert cls(0.0)(x) is x
    assert not torch.equal(cls(0.5)(x), x)


def test_extra_repr_shows_settings():
    assert "p=0.2" in repr(ed.DropNeuron(0.2))
    assert "p=0.2, mode='batch', groups=4" in repr(ed.DropPath(0.2, mode="batch", groups=4))
    assert "p=0.1, mode='sample'" in repr(ed.DropLayer(0.1))


def test_modules_in_sequential():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), ed.DropNeuron(0.2), ed.DropChannel(0.2), ed.DropPath(0.2, groups=4), nn.ReLU())
    x = torch.randn(2, 3, 4, 4)
    assert net(x).shape == (2, 8, 4, 4)
    net.eval()
    reference = net[4](net[0](x))
    assert torch.equal(net(x), reference)


def test_drop_layer_takes_a_pair_in_sequential():
    pair = (torch.ones(4, 3), torch.zeros(4, 3))
    layer = ed.DropLayer(0.5).eval()
    assert torch.equal(nn.Sequential(layer)(pair), torch.ones(4, 3))
    with pytest.raises(TypeError, match="branch, shortcut"):
        layer(torch.ones(4, 3))


def test_drop_path_module_list_input():
    branches = [torch.ones(4, 2, 2, 2), torch.ones(4, 3, 2, 2)]
    out = ed.DropPath(0.5)(branches)
    assert out.shape == (4, 5, 2, 2)
    assert torch.equal(ed.DropPath(0.5).eval()(branches), torch.ones(4, 5, 2, 2))


@pytest.mark.parametrize("drop_type,cls", [(0, ed.DropNeuron), (1, ed.DropChannel), (2, ed.DropPath), (3, ed.DropLayer),
                                           ("neuron", ed.DropNeuron), ("channel", ed.DropChannel),
                                           ("path", ed.DropPath), ("layer", ed.DropLayer)])
def test_make_drop(drop_type, cls):
    module = ed.make_drop(drop_type, 0.25)
    assert type(module) is cls and module.p == 0.25


def test_one_level_vocabulary_from_make_drop_to_the_norm_modules():
    """0-3 and the names are the one ``DropLevel``; modules store it and show its name."""
    assert type(ed.make_drop(ed.DropLevel.PATH, 0.1)) is ed.DropPath
    for drop_type in (0, "neuron", ed.DropLevel.NEURON):
        norm = ed.BatchNormActDrop2d(4, drop_type=drop_type, drop_rate=0.1)
        assert norm.drop_type is ed.DropLevel.NEURON and "drop_type='neuron'" in repr(norm)
    assert ed.GroupNormActDrop(2, 4, drop_type=1).drop_type is ed.DropLevel.CHANNEL
    for drop_type in (2, "layer"):
        with pytest.raises(ValueError, match="inside a norm/conv block must be 'neuron' \\(0\\) or 'channel' \\(1\\)"):
            ed.BatchNormActDrop2d(4, drop_type=drop_type)


def test_module_validates_p():
    with pytest.raises(ValueError, match="p must be in"):
        ed.DropChannel(1.2)
    with pytest.raises(ValueError, match="mode must be one of"):
        ed.DropLayer(0.1, mode="row")


def test_modules_match_functional_under_manual_seed():
    x = torch.randn(3, 4, 5, 5)
    torch.manual_seed(1)
    a = ed.DropChannel(0.4)(x)
    torch.manual_seed(1)
    b = ed.drop_channel(x, 0.4)
    assert torch.equal(a, b)
