"""Backward regenerates masks from the seed: nothing per element is saved for backward."""

import pytest
import torch
import torch.nn.functional as F

import effdrop_triton as ed
from conftest import saved_bytes


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
    assert saved_bytes(op, x, y) <= 8  # the 0-d int64 seed


def test_pytorch_dropout_saves_a_mask_for_comparison():
    x = torch.randn(SHAPE, requires_grad=True)
    assert saved_bytes(lambda t: F.dropout(t, 0.3), x) >= x.numel()
