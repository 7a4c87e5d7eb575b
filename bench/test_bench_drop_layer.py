"""drop_layer (residual add with a per-sample dropped branch) against torchvision's and timm's stochastic depth + add."""

import pytest

from bench.baselines import providers


@pytest.mark.parametrize("provider", providers("drop_layer"))
def test_drop_layer(measure, make_input, provider):
    branch, shortcut = make_input(), make_input()
    # The shortcut's gradient is the output gradient passed through: only the branch's is written.
    measure("drop_layer", provider, [branch, shortcut], grad_written=[branch])
