"""convert(): every dropout module of a torchvision or timm model becomes this package's, with the
same rate and mode; outputs in eval and the state dict stay the same."""

import copy

import pytest
import torch
from torch import nn

import effdrop_triton as ed

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from timm.layers import DropPath as TimmDropPath  # noqa: E402
from torchvision.ops import StochasticDepth  # noqa: E402

FOREIGN = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, TimmDropPath, StochasticDepth)


def foreign_rates(model):
    """(path, class name, rate, mode) of each dropout module, in module order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, FOREIGN):
            rate = module.drop_prob if isinstance(module, TimmDropPath) else module.p
            found.append((name, type(module).__name__, rate, getattr(module, "mode", "row")))
    return found


MODELS = {
    "torchvision_efficientnet_b0": lambda: torchvision.models.efficientnet_b0(weights=None, stochastic_depth_prob=0.3),
    "timm_vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                               drop_rate=0.1, proj_drop_rate=0.2, attn_drop_rate=0.1,
                                               drop_path_rate=0.3),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_replaces_every_dropout_module(name):
    torch.manual_seed(0)
    original = MODELS[name]().eval()
    before = foreign_rates(original)
    assert len(before) > 3 and any(rate > 0 for _, _, rate, _ in before)
    converted = ed.convert(copy.deepcopy(original))
    assert foreign_rates(converted) == []
    modules = dict(converted.named_modules())
    for path, kind, rate, mode in before:
        new = modules[path]
        if kind == "Dropout":
            assert isinstance(new, ed.DropNeuron) and new.p == rate
        elif kind.startswith("Dropout"):
            assert isinstance(new, ed.DropChannel) and new.p == rate
        else:  # per-sample (or per-batch) branch gate
            assert isinstance(new, ed.DropPath) and new.p == rate and new.groups == 1
            assert new.mode == ("sample" if mode == "row" else "batch")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), original(x))
    # the state dict is untouched: it loads both ways, strictly
    assert converted.state_dict().keys() == original.state_dict().keys()
    MODELS[name]().load_state_dict(converted.state_dict())
    converted.load_state_dict(original.state_dict())


def test_converted_modules_drop_in_training():
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5), StochasticDepth(0.5, "batch"))
    converted = ed.convert(model).train()
    assert isinstance(converted[1], ed.DropNeuron) and converted[2].mode == "batch"
    x = torch.ones(16, 64)
    y = converted[1](x)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # drop-neuron: zeros and 1/(1-p)
    per_sample = ed.convert(StochasticDepth(0.5, "row"))(x)
    assert all(set(row.unique().tolist()) <= {0.0, 2.0} and row.unique().numel() == 1 for row in per_sample)


def test_convert_keeps_training_flag_and_other_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout2d(0.2), nn.BatchNorm2d(4)).eval()
    converted = ed.convert(model)
    assert isinstance(converted[0], nn.Conv2d) and isinstance(converted[2], nn.BatchNorm2d)
    assert isinstance(converted[1], ed.DropChannel) and not converted[1].training
    assert isinstance(ed.convert(nn.Dropout(0.1)), ed.DropNeuron)  # a bare dropout module is returned replaced


def test_convert_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="nn.Module, got str"):
        ed.convert("model")
