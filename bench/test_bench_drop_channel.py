"""drop_channel (per sample and channel) against F.dropout2d."""

import pytest

from bench.baselines import providers


@pytest.mark.parametrize("provider", providers("drop_channel"))
def test_drop_channel(measure, make_input, provider):
    measure("drop_channel", provider, [make_input()])
