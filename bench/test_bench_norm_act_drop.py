"""norm_act_drop (BatchNorm -> ReLU -> drop-channel, fused) against nn.BatchNorm2d + nn.ReLU + nn.Dropout2d.

Training (``norm_act_drop``, batch statistics, p = P): this package's two backends against the
eager composition, forward / backward / forward+backward. Weight and bias are fp32 per-channel
leaves whose gradients backward writes too.

bytes_moved counts what an ideal training BatchNorm needs, the same for every provider
(E = bytes of x, which are those of y, dy and dx; the per-channel weight, bias and their
gradients are added, a few KiB):

- fwd = 2E + E: the batch statistics need a full pass over x before the first output can be
  written, so an ideal implementation reads x twice (statistics, then normalise-ReLU-drop) and
  writes y once;
- bwd = 2 * 2E + E: the input gradient needs the per-channel sums of dy' and dy' * x_hat
  (dy' = dy through the dropout and ReLU masks), a reduction over x and dy before any dx, then a
  pass that reads x and dy again and writes dx.

Eval (``norm_act_drop_eval``, forward only, under no_grad: inference): running statistics, so
dropout is the identity and one pass suffices, bytes_moved = E read + E written (+ the four
per-channel vectors). Timed as its own op so the report shows it apart from training; its bwd
and fwdbwd cases skip.
"""

import pytest
import torch

import effdrop_triton
from bench.baselines import providers

EXTRA_SHAPES = ("bn256",)  # 128x256x32x32 channels_last: the shape of the GPU targets (1.8x train, 2.5x eval)


def _train(x, weight, bias, p):
    return effdrop_triton.norm_act_drop(x, weight, bias, norm="bn", training=True, act=True, drop_type="channel", p=p)


@torch.no_grad()
def _eval(x, weight, bias, running_mean, running_var, p):
    return effdrop_triton.norm_act_drop(x, weight, bias, running_mean, running_var, norm="bn", training=False,
                                        act=True, drop_type="channel", p=p)


@pytest.mark.parametrize("provider", providers("norm_act_drop"))
def test_norm_act_drop(measure, make_input, provider):
    x = make_input()
    c = x.shape[1]
    weight, bias = make_input(channels=c), make_input(channels=c)
    e, params = x.numel() * x.element_size(), 4 * 2 * c  # weight, bias: fp32
    measure("norm_act_drop", provider, [x, weight, bias], fn=_train if provider in ("triton", "torch") else None,
            bytes_moved={"fwd": 3 * e + params, "bwd": 5 * e + 2 * params})


@pytest.mark.parametrize("provider", providers("norm_act_drop_eval"))
def test_norm_act_drop_eval(measure, make_input, provider, pass_):
    if pass_ != "fwd":
        pytest.skip("eval (running statistics) is inference: timed forward only")
    x = make_input()
    c = x.shape[1]
    weight, bias = make_input(channels=c), make_input(channels=c)
    running_mean = torch.randn(c, device=x.device) * 0.1
    running_var = torch.rand(c, device=x.device) + 0.5
    # default bytes_moved: every argument read once + the output written once, the ideal eval pass
    measure("norm_act_drop_eval", provider, [x, weight, bias, running_mean, running_var],
            fn=_eval if provider in ("triton", "torch") else None)
