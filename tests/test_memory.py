"""What a call keeps for backward: the seed (8 bytes), except drop-neuron on the CPU fallback, which
keeps its mask packed to one bit per element (at most ceil(numel / 8) + 8 bytes)."""

import math

import pytest
import torch
import torch.nn.functional as F

import effdrop_triton as ed
from effdrop_triton import masks
from effdrop_triton.testing import saved_for_backward


SHAPE = (8, 16, 16, 16)


@pytest.mark.parametrize("op", [
    lambda x, y: ed.drop_channel(x, 0.3),
    lambda x, y: ed.drop_path(x, 0.3, groups=4),
    lambda x, y: ed.drop_path([x, y], 0.3),
    lambda x, y: ed.drop_layer(x, y, 0.3),
])
def test_no_per_element_bytes_saved(op):
    x = torch.randn(SHAPE, requires_grad=True)
    y = torch.randn(SHAPE, requires_grad=True)
    assert saved_for_backward(op, x, y)[1] <= 8  # the 0-d int64 seed


@pytest.mark.parametrize("shape", [SHAPE, (3, 5, 7), (1,), (13,)])
def test_cpu_drop_neuron_keeps_one_bit_per_element(shape):
    x = torch.randn(shape, requires_grad=True)
    out, saved = saved_for_backward(lambda t: ed.drop_neuron(t, 0.3, seed=11), x)
    numel = math.prod(shape)
    assert saved <= (numel + 7) // 8 + 8
    # and those bits are the documented mask: the gradient is zero exactly where the output is dropped
    out.backward(torch.ones_like(out))
    expected = masks.neuron_keep(numel, torch.tensor(11), 0.3).view(shape)
    assert torch.equal(x.grad != 0, expected) and torch.equal(out != 0, expected & (x != 0))


@pytest.mark.filterwarnings("ignore:.*data_ptr.*")  # fake storages have no memory to point at
def test_drop_neuron_fallback_on_cuda_saves_only_the_seed():
    """The fallback on a GPU saves the seed alone (fake CUDA tensors: no device needed); the Triton path's
    8 bytes are checked under the interpreter (``tests/test_triton_interpret.py``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), ed.use_backend("torch"):
        x = torch.randn(SHAPE, device="cuda", requires_grad=True)
        _, saved = saved_for_backward(lambda t: ed.drop_neuron(t, 0.3), x)
    assert saved == 8


def test_pytorch_dropout_saves_a_mask_for_comparison():
    x = torch.randn(SHAPE, requires_grad=True)
    assert saved_for_backward(lambda t: F.dropout(t, 0.3), x)[1] >= x.numel()
