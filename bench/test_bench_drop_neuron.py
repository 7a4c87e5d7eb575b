"""drop_neuron (per element) against F.dropout."""

import pytest

from bench.baselines import providers


@pytest.mark.parametrize("provider", providers("drop_neuron"))
def test_drop_neuron(measure, make_input, provider):
    measure("drop_neuron", provider, [make_input()])
