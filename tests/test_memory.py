"""Backward regenerates masks from the seed: nothing per element is saved for backward."""

import pytest
import torch
import torch.nn.functional as F

import effdrop_triton as ed
from effdrop_triton.testing import saved_for_backward


SHAPE = (8, 16, 16, 16)


@pytest.mark.parametrize("op", [
    lambda x, y: ed.drop_neuron(x, 0.3),
    lambda x, y: ed.drop_channel(x, 0.3),
    lambda x, y: ed.drop_path(x, 0.3, groups=4),
    lambda x, y: ed.drop_path([x, y], 0.3),
    lambda x, y: ed.drop_layer(x, y, 0.3),
])
def test_no_per_element_bytes_saved(op):
    x = torch.randn(SHAPE, requires_grad=True)
    y = torch.randn(SHAPE, requires_grad=True)
    assert saved_for_backward(op, x, y)[1] <= 8  # the 0-d int64 seed


def test_pytorch_dropout_saves_a_mask_for_comparison():
    x = torch.randn(SHAPE, requires_grad=True)
    assert saved_for_backward(lambda t: F.dropout(t, 0.3), x)[1] >= x.numel()
