"""``ops._autograd.Op``: the eager path (implementation + formulas in a plain autograd.Function)
gives what the custom op gives through the dispatcher, values and every gradient, and tracing
(fake tensors, compile) still goes through the op."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import effdrop_triton as ed
from effdrop_triton.ops.drop_layer import drop_layer_op
from effdrop_triton.ops.drop_neuron import drop_neuron_op
from effdrop_triton.ops.drop_path import drop_path_cat_op, drop_path_split_op
from effdrop_triton.ops.norm_act_drop import norm_act_drop_op
from effdrop_triton.ops.norm_act_drop_conv2d import norm_act_drop_conv2d_op

SEED = torch.tensor(11)


def leaves(shapes):
    torch.manual_seed(0)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


def stats_of(x):
    x = x.detach()
    return torch.stack((x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0))).view(2, 1, -1)


CASES = {  # name: (op, tensor shapes, args builder from the leaves)
    "drop_neuron": (drop_neuron_op, [(2, 3, 4, 4)], lambda t: (t[0], SEED, 0.4, False)),
    "drop_layer": (drop_layer_op, [(4, 3, 2, 2), (4, 3, 2, 2)], lambda t: (t[0], t[1], SEED, 0.5, True, False)),
    "drop_path_cat": (drop_path_cat_op, [(4, 2, 3, 3), (4, 3, 3, 3)], lambda t: ([t[0], t[1]], SEED, 0.5, True, False)),
    "drop_path_split": (drop_path_split_op, [(4, 5, 3, 3)], lambda t: (t[0], SEED, 0.5, True, [2, 3], False)),
    "norm_act_drop": (norm_act_drop_op, [(4, 3, 5, 5), (3,), (3,)],
                      lambda t: (t[0], t[1], t[2], stats_of(t[0]), SEED, 0, 1e-5, True, 2, 0.3, True, False)),
    "norm_act_drop_conv2d": (norm_act_drop_conv2d_op, [(4, 3, 5, 5), (3,), (3,), (6, 3, 3, 3), (6,)],
                             lambda t: (t[0], t[1], t[2], stats_of(t[0]), SEED, t[3], t[4], [1, 1], [1, 1], [1, 1], 1,
                                        0, 1e-5, True, 1, 0.3, True, False)),
}


def run(case, through_op: bool):
    op, shapes, build = CASES[case]
    tensors = leaves(shapes)
    out = op.op(*build(tensors)) if through_op else op(*build(tensors))
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_path_is_a_plain_autograd_function(case):
    """No custom-op dispatch on the eager path: the output's grad_fn is the op's own Function."""
    op, shapes, build = CASES[case]
    out = op(*build(leaves(shapes)))
    out = out[0] if isinstance(out, list) else out
    ref = op.op(*build(leaves(shapes)))
    ref = ref[0] if isinstance(ref, list) else ref
    eager = type(out.grad_fn)
    assert eager.__name__.endswith("Backward") and "effdrop" not in eager.__name__.lower()
    assert type(ref.grad_fn) is not eager


def test_list_outputs_stay_lists():
    grad = torch.randn(4, 5, 3, 3, requires_grad=True)
    parts = drop_path_split_op(grad, SEED, 0.5, True, [2, 3], False)
    assert isinstance(parts, list) and [p.shape[1] for p in parts] == [2, 3]


def test_double_backward_through_eager_path():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ed.drop_channel(t, 0.5, seed=4), (x,))


def test_fake_tensors_go_through_the_op():
    with FakeTensorMode():
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        out = ed.drop_neuron(x, 0.5, seed=1)
        assert out.shape == x.shape and out.grad_fn is not None
        assert not isinstance(out.grad_fn, drop_neuron_op.function._backward_cls)


def test_op_without_autograd_refuses_grad_inputs():
    from effdrop_triton.ops._autograd import Op

    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    op = Op("effdrop_test::no_formula", twice, lambda x: torch.empty_like(x))
    with pytest.raises(RuntimeError, match="effdrop_test::no_formula has no autograd formula"):
        op(torch.randn(2, 3, requires_grad=True))
    assert torch.equal(op(torch.ones(2)), torch.full((2,), 2.0))
