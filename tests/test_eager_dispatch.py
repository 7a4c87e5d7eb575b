"""``ops._autograd.call``: the eager path (implementation + formulas in a plain autograd.Function)
gives what the custom op gives through the dispatcher, values and every gradient, and tracing
(fake tensors, compile) still goes through the op."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import effdrop_triton as ed
from effdrop_triton.ops._autograd import _EagerOp, _OpContext, call
from effdrop_triton.ops.drop_layer import drop_layer_op
from effdrop_triton.ops.drop_neuron import drop_neuron_op
from effdrop_triton.ops.drop_path import drop_path_cat_op, drop_path_split_op
from effdrop_triton.ops.norm_act_drop import norm_act_drop_op
from effdrop_triton.ops.norm_act_drop_conv import norm_act_drop_conv2d_op

SEED = torch.tensor(11)


def leaves(shapes):
    torch.manual_seed(0)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


CASES = {  # name: (op, tensor shapes, args builder from the leaves)
    "drop_neuron": (drop_neuron_op, [(2, 3, 4, 4)], lambda t: (t[0], SEED, 0.4, False)),
    "drop_layer": (drop_layer_op, [(4, 3, 2, 2), (4, 3, 2, 2)], lambda t: (t[0], t[1], SEED, 0.5, True, False)),
    "drop_path_cat": (drop_path_cat_op, [(4, 2, 3, 3), (4, 3, 3, 3)], lambda t: ([t[0], t[1]], SEED, 0.5, True, False)),
    "drop_path_split": (drop_path_split_op, [(4, 5, 3, 3)], lambda t: (t[0], SEED, 0.5, True, [2, 3], False)),
    "norm_act_drop": (norm_act_drop_op, [(4, 3, 5, 5), (3,), (3,)],
                      lambda t: (t[0], t[1], t[2], t[0].detach().mean((0, 2, 3)), t[0].detach().var((0, 2, 3)),
                                 SEED, 0, True, 1e-5, True, 2, 0.3, False)),
    "norm_act_drop_conv2d": (norm_act_drop_conv2d_op, [(4, 3, 5, 5), (3,), (3,), (6, 3, 3, 3), (6,)],
                             lambda t: (t[0], t[1], t[2], t[0].detach().mean((0, 2, 3)), t[0].detach().var((0, 2, 3)),
                                        SEED, t[3], t[4], [1, 1], [1, 1], [1, 1], 1, 0, True, 1e-5, True, 1, 0.3, False)),
}


def run(case, through_op: bool):
    op, shapes, build = CASES[case]
    tensors = leaves(shapes)
    out = op(*build(tensors)) if through_op else call(op, *build(tensors))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    torch.manual_seed(1)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, tensors)
    return outs, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_path_equals_dispatcher(case):
    (outs, grads), (ref_outs, ref_grads) = run(case, False), run(case, True)
    assert len(outs) == len(ref_outs)
    for a, b in zip(outs + list(grads), ref_outs + list(ref_grads)):
        assert torch.equal(a, b)


def test_eager_path_is_an_autograd_function_and_keeps_list_outputs():
    grad = torch.randn(4, 5, 3, 3, requires_grad=True)
    parts = call(drop_path_split_op, grad, SEED, 0.5, True, [2, 3], False)
    assert isinstance(parts, list) and [p.shape[1] for p in parts] == [2, 3]
    assert isinstance(parts[0].grad_fn, _EagerOp._backward_cls)


def test_needs_input_grad_is_per_op_input():
    """The formulas index needs_input_grad by op input; the autograd.Function's own is by flat
    argument after (formula, layout), a list input spreading over several."""
    class FunctionCtx:
        needs_input_grad = (False, False, False, True, True, False)

    op_ctx = _OpContext((2, -1, -1))  # a list of 2 tensors, then two single arguments
    op_ctx._ctx = FunctionCtx()
    assert op_ctx.needs_input_grad == (True, True, False)


def test_double_backward_through_eager_path():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ed.drop_channel(t, 0.5, seed=4), (x,))


def test_fake_tensors_go_through_the_op():
    with FakeTensorMode():
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        out = ed.drop_neuron(x, 0.5, seed=1)
        assert out.shape == x.shape and out.grad_fn is not None
        assert not isinstance(out.grad_fn, _EagerOp._backward_cls)


def test_formula_without_autograd_refuses_grad_inputs():
    from effdrop_triton.ops.norm_stats import norm_stats_op

    with pytest.raises(RuntimeError, match="effdrop::norm_stats has no autograd formula"):
        call(norm_stats_op, torch.randn(2, 3, 4, requires_grad=True), 0, True, False)
