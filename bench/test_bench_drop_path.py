"""drop_path over 4 branches of C/4 channels (gated concat) against gate-each-branch-then-cat."""

import pytest

from bench.baselines import providers


@pytest.mark.parametrize("provider", providers("drop_path"))
def test_drop_path(measure, make_input, provider):
    measure("drop_path", provider, [make_input(split=4)])
