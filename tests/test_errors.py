"""Every bad input gets a clear error naming the argument and the value; nothing is broadcast, truncated or promoted silently."""

import math

import pytest
import torch

import effdrop_triton as ed

X = torch.randn(2, 4, 3, 3)


def _calls(p=0.5, x=X, **kw):
    return [
        lambda: ed.drop_neuron(x, p, **kw),
        lambda: ed.drop_channel(x, p, **kw),
        lambda: ed.drop_path(x, p, groups=2, **kw),
        lambda: ed.drop_path([x, x], p, **kw),
        lambda: ed.drop_layer(x, x, p, **kw),
    ]


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan, math.inf])
@pytest.mark.parametrize("index", range(5))
def test_p_out_of_range(p, index):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got " + ("nan" if math.isnan(p) else str(p))):
        _calls(p)[index]()


@pytest.mark.parametrize("p", ["0.5", None, torch.tensor([0.1, 0.2]), True, 0.5j])
@pytest.mark.parametrize("index", range(5))
def test_p_not_a_real_number(p, index):
    with pytest.raises(TypeError, match="p must be"):
        _calls(p)[index]()


def test_p_one_element_tensor_is_accepted():
    out = ed.drop_neuron(X, torch.tensor(0.5), seed=1)
    assert torch.equal(out, ed.drop_neuron(X, 0.5, seed=1))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("index", range(5))
def test_integer_and_bool_tensors(dtype, index):
    with pytest.raises(TypeError, match=f"floating-point tensor.*{dtype}"):
        _calls(x=torch.ones(2, 4, 3, 3, dtype=dtype))[index]()


def test_drop_channel_needs_two_dims():
    with pytest.raises(ValueError, match=r"at least 2 dims, got shape \(5,\)"):
        ed.drop_channel(torch.randn(5), 0.5)


def test_drop_path_branch_mismatches():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="share N and spatial size"):
        ed.drop_path([a, torch.randn(3, 3, 4, 4)], 0.5)
    with pytest.raises(ValueError, match="share N and spatial size"):
        ed.drop_path([a, torch.randn(2, 3, 4, 5)], 0.5)
    with pytest.raises(ValueError, match="share a dtype"):
        ed.drop_path([a, torch.randn(2, 3, 4, 4, dtype=torch.float64)], 0.5)
    with pytest.raises(ValueError, match="empty list"):
        ed.drop_path([], 0.5)


def test_drop_path_groups_errors():
    with pytest.raises(ValueError, match="needs groups=G"):
        ed.drop_path(X, 0.5)
    with pytest.raises(ValueError, match="groups=3 must divide the channel dim"):
        ed.drop_path(X, 0.5, groups=3)
    with pytest.raises(ValueError, match="groups must be a positive int, got 0"):
        ed.drop_path(X, 0.5, groups=0)
    with pytest.raises(ValueError, match="groups=2 applies to a single tensor"):
        ed.drop_path([X, X], 0.5, groups=2)


def test_drop_layer_shape_and_dtype_mismatch():
    with pytest.raises(ValueError, match=r"one shape, got \(2, 4, 3, 3\) and \(1, 4, 3, 3\)"):
        ed.drop_layer(X, X[:1], 0.5)
    with pytest.raises(ValueError, match="one dtype"):
        ed.drop_layer(X, X.double(), 0.5)


@pytest.mark.parametrize("mode", ["row", "Sample", None])
def test_unknown_mode(mode):
    with pytest.raises(ValueError, match=r"mode must be one of \('sample', 'batch'\)"):
        ed.drop_layer(X, X, 0.5, mode=mode)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        ed.drop_path([X], 0.5, mode=mode)


def test_unknown_backend_and_drop_type():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        ed.set_backend("cuda")
    with pytest.raises(ValueError, match=r"drop_type must be one of 0 / 'neuron', 1 / 'channel', 2 / 'path', 3 / 'layer', got 4"):
        ed.make_drop(4, 0.5)
    with pytest.raises(ValueError, match="got 'block'"):
        ed.make_drop("block", 0.5)


@pytest.mark.parametrize("seed,error", [
    (-1, ValueError), (2**63, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError),
    (torch.tensor([1]), TypeError), (torch.tensor(1.0), TypeError),
])
def test_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        ed.drop_neuron(X, 0.5, seed=seed)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        ed.drop_neuron([1.0, 2.0], 0.5)


def test_seed_is_checked_in_eval_and_at_p0_too():
    with pytest.raises(ValueError, match="seed must be in"):
        ed.drop_neuron(X, 0.5, training=False, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        ed.drop_layer(X, X, 0.0, seed="a")


def test_drop_path_module_checks_groups():
    with pytest.raises(ValueError, match="groups must be a positive int, got 0"):
        ed.DropPath(0.1, groups=0)
