"""Residual: the drop-layer container that skips the branch's compute where it is dropped."""

import pytest
import torch
from torch import nn

import effdrop_triton as ed


class CountingBranch(nn.Module):
    """A conv branch that records how many samples it was run on."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.samples_seen = []

    def forward(self, x):
        self.samples_seen.append(x.shape[0])
        return self.conv(x)


def test_eval_and_zero_rate_add_the_whole_branch():
    branch = CountingBranch()
    x = torch.randn(5, 4, 6, 6)
    expected = x + branch.conv(x)
    assert torch.equal(ed.Residual(branch, drop_rate=0.5).eval()(x), expected)
    assert torch.equal(ed.Residual(branch, drop_rate=0.0)(x), expected)
    shortcut = nn.Conv2d(4, 4, 1)
    assert torch.equal(ed.Residual(branch, shortcut, drop_rate=0.5).eval()(x), shortcut(x) + branch.conv(x))


def test_batch_mode_never_runs_a_dropped_branch():
    branch = CountingBranch()
    block = ed.Residual(branch, drop_rate=0.5, mode="batch")
    x = torch.randn(3, 4, 5, 5)
    outcomes = []
    for step in range(20):
        calls = len(branch.samples_seen)
        y = block(x)
        ran = len(branch.samples_seen) > calls
        outcomes.append(ran)
        if ran:
            torch.testing.assert_close(y, x + 2 * branch.conv(x))
        else:
            assert torch.equal(y, x)
    assert any(outcomes) and not all(outcomes)


def _forward_backward(block, x, seed):
    torch.manual_seed(seed)
    y = block(x)
    params = [x, *block.branch.parameters()]
    grads = torch.autograd.grad(y.square().sum(), params, allow_unused=True)
    return y, [torch.zeros_like(t) if g is None else g for t, g in zip(params, grads)]


@pytest.mark.parametrize("p", [0.3, 0.7, 1.0])
def test_skip_dropped_runs_kept_samples_only_and_matches_drop_layer(p):
    branch = CountingBranch()
    x = torch.randn(16, 4, 5, 5, requires_grad=True)
    y, grads = _forward_backward(ed.Residual(branch, drop_rate=p, skip_dropped=True), x, seed=4)
    ran_on = list(branch.samples_seen)
    reference, reference_grads = _forward_backward(ed.Residual(branch, drop_rate=p), x, seed=4)

    kept = int((reference != x).flatten(1).any(1).sum())
    assert ran_on == ([kept] if kept else [])
    torch.testing.assert_close(y, reference)
    for g, ref in zip(grads, reference_grads):  # the branch saw a sub-batch: other summation order
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)


def test_settings_and_errors():
    block = ed.Residual(nn.Identity(), drop_rate=0.2, mode="batch")
    assert "drop_rate=0.2, mode='batch', skip_dropped=False" in repr(block)
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\], got 2.0"):
        ed.Residual(nn.Identity(), drop_rate=2.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        ed.Residual(nn.Identity(), drop_rate=0.2, mode="row")
    with pytest.raises(ValueError, match="one shape"):
        ed.Residual(nn.Conv2d(4, 8, 1), drop_rate=0.2)(torch.randn(2, 4, 3, 3))
