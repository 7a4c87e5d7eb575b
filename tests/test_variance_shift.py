"""Variance shift: the eval/train ratio of a tracked norm's input statistics, on a synthetic
case where the answer is known, and the choice of the norms that receive dropped activations."""

import math

import pytest
import torch
from torch import nn

import effdrop_triton as ed
from effdrop_triton.norm_act import BatchNormActDrop2d


def expected_var_ratio(mu, s2, p):
    """Input x ~ (mu, s2) dropped with rate p and scaled by 1/(1-p): E[y] = mu, E[y^2] = (s2 + mu^2)/(1-p)."""
    return s2 / ((s2 + mu * mu) / (1 - p) - mu * mu)


@pytest.mark.parametrize("drop", ["neuron", "channel"])
@pytest.mark.parametrize("mu, s2, p", [(0.0, 1.0, 0.5), (0.0, 4.0, 0.2), (1.0, 1.0, 0.3)])
@pytest.mark.parametrize("fused", [True, False])
def test_known_variance_ratio(drop, mu, s2, p, fused):
    torch.manual_seed(0)
    channels = 16
    model = nn.Sequential(ed.make_drop(drop, p), BatchNormActDrop2d(channels, fused=fused))
    assert ed.track_variance_shift(model) == ["1"]
    batches = [torch.randn(32, channels, 8, 8) * math.sqrt(s2) + mu for _ in range(20)]
    model.train()
    for x in batches:
        model(x)
    model.eval()
    for x in batches:
        model(x)
    report = ed.variance_shift(model)
    assert list(report) == ["1"]
    norm = model[1]
    per_channel = norm.input_var_eval / norm.input_var_train
    assert report["1"]["var"] == pytest.approx(per_channel.mean().item(), rel=1e-6)
    # the channels are independent samples of the ratio: their spread is its sampling error
    standard_error = per_channel.std().item() / math.sqrt(channels)
    assert abs(report["1"]["var"] - expected_var_ratio(mu, s2, p)) < 5 * standard_error
    assert standard_error < 0.05  # the test has power to tell 1 - p from 1
    if mu:
        mean_error = (norm.input_mean_eval / norm.input_mean_train).std().item() / math.sqrt(channels)
        assert abs(report["1"]["mean"] - 1.0) < 5 * mean_error + 1e-6
    else:  # every channel mean is sampling noise around zero: no ratio of means is defined
        assert math.isnan(report["1"]["mean"])


def test_no_dropout_no_shift():
    model = nn.Sequential(ed.DropNeuron(0.3), BatchNormActDrop2d(4))
    ed.track_variance_shift(model)
    x = torch.randn(64, 4, 8, 8)
    model.train()(x)
    model.eval()(x)
    ratio = ed.variance_shift(model)["1"]
    # eval sees x itself; train saw the dropped x: on the same data the variance ratio is below 1
    assert ratio["var"] < 0.8
    model[0].p = 0.0
    ed.track_variance_shift(model)
    assert ed.variance_shift(model) == {}  # nothing drops, nothing is tracked


def test_receiving_norm_is_next_blocks_for_pre_activation_blocks():
    """Types 0/1 drop at the end of a block: the next block's norm receives; types 2/3 drop before
    their own norm."""
    pre = nn.Sequential(ed.ConvBlock(4, 4, 3, block_type=0, drop_rate=0.2, padding=1),
                        ed.ConvBlock(4, 4, 3, block_type=1, drop_rate=0.2, padding=1),
                        ed.ConvBlock(4, 4, 3, block_type=0, drop_rate=0.0, padding=1),
                        BatchNormActDrop2d(4))
    assert ed.track_variance_shift(pre) == ["1.norm", "2.norm"]
    post = nn.Sequential(ed.ConvBlock(4, 4, 3, block_type=2, drop_rate=0.2, padding=1),
                         ed.ConvBlock(4, 4, 3, block_type=3, drop_rate=0.2, padding=1))
    assert ed.track_variance_shift(post) == ["0.norm", "1.norm"]
    assert post[0].norm.track_stats and not pre[0].norm.track_stats and not pre[3].track_stats
    x = torch.randn(2, 4, 6, 6)
    post.train()(x)
    post.eval()(x)
    assert set(ed.variance_shift(post)) == {"0.norm", "1.norm"}
    ed.track_variance_shift(post, on=False)
    assert ed.variance_shift(post) == {}


def test_residual_drop_layer_feeds_the_next_norm():
    branch = nn.Sequential(ed.ConvBlock(4, 4, 3, block_type=0, padding=1))
    model = nn.Sequential(ed.Residual(branch, drop_rate=0.3), BatchNormActDrop2d(4))
    assert ed.track_variance_shift(model) == ["1"]


def test_tracking_keeps_train_and_eval_apart_and_resets():
    norm = BatchNormActDrop2d(3, track_stats=True)
    norm.train()(torch.randn(16, 3, 4, 4) * 2)
    norm.eval()(torch.randn(16, 3, 4, 4))
    assert int(norm.input_count_train) == 1 and int(norm.input_count_eval) == 1
    assert (norm.input_var_train > 2).all() and (norm.input_var_eval < 2).all()
    ed.reset_variance_shift(norm)
    assert int(norm.input_count_train) == 0 and float(norm.input_var_train.abs().sum()) == 0
    assert "input_var_train" not in norm.state_dict()
