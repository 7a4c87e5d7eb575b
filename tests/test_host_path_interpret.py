"""The Triton path's host work per call: its kernel launches and almost nothing else, and no host sync.

Run under ``TRITON_INTERPRET=1`` (``make test-interpret``): the package takes its Triton path on
CPU tensors, every Triton launch is replaced by a counter (``bench.host_time.stubbed_launches``), and
``torch.profiler`` records the other top-level ATen ops a call dispatches (views, which copy nothing,
are free; allocations count). The calls are the public API with its defaults (``drop_type="channel"``,
``p=0.1``, ``seed=None``, ``momentum=0.1``, ``track_stats=False``), 4-d fp32 input; gradients come
from ``torch.autograd.grad``, so autograd's own accumulation into ``.grad`` is not counted.

The second half runs each op's real CUDA-path implementation (not its registered fake kernel) on
fake CUDA tensors with the launches stubbed: a ``.item()``, ``.nonzero()``, ``bool(tensor)`` or
device-to-host copy anywhere in the call raises.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import effdrop_triton as ed
from conftest import INTERPRET

triton = pytest.importorskip("triton")
if not INTERPRET:
    pytest.skip("needs TRITON_INTERPRET=1 set before the kernels are imported", allow_module_level=True)
pytestmark = pytest.mark.interpret

from bench.host_time import host_work, stubbed_launches  # noqa: E402

P = 0.1
SHAPE = (8, 16, 4, 4)


def case_calls(device="cpu", drop_type="channel", momentum=0.1, channels_last=False):
    """name -> (forward, tensors to differentiate or None, budget) for the issue's table of budgets.

    A budget is ``(launches, ops)`` maxima for the forward and for forward+backward."""
    torch.manual_seed(0)
    N, C = SHAPE[0], SHAPE[1]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def leaf(*shape):
        return torch.randn(shape, device=device).contiguous(memory_format=memory_format).requires_grad_()

    x, shortcut = leaf(*SHAPE), leaf(*SHAPE)
    branches = [leaf(N, C // 4, *SHAPE[2:]) for _ in range(4)]
    with torch.device(device):
        bn = ed.BatchNormActDrop2d(C, momentum=momentum, drop_type=drop_type, drop_rate=P)
        bn_eval = ed.BatchNormActDrop2d(C, drop_type=drop_type, drop_rate=P).eval()
        gn = ed.GroupNormActDrop(4, C, drop_type=drop_type, drop_rate=P)
        block = ed.ConvBlock(C, C, 3, padding=1, block_type=0, drop_type=drop_type, drop_rate=P)
    weight, bias = bn.weight, bn.bias
    running = (torch.zeros(C, device=device), torch.ones(C, device=device))
    batches = torch.ones((), dtype=torch.int64, device=device)  # the cumulative average's count (momentum=None)
    standalone = ((1, 2), (2, 4))
    fused = ((3, 5), (5, 9))
    return {
        "drop_neuron": (lambda: ed.drop_neuron(x, P), [x], standalone),
        "drop_channel": (lambda: ed.drop_channel(x, P), [x], standalone),
        "drop_path groups=4": (lambda: ed.drop_path(x, P, groups=4), [x], standalone),
        "drop_layer": (lambda: ed.drop_layer(x, shortcut, P), [x, shortcut], standalone),
        "drop_path 4 branches": (lambda: ed.drop_path(branches, P), branches, ((4, 6), (8, 12))),
        "BatchNormActDrop2d": (lambda: bn(x), [x, weight, bias], fused),
        "norm_act_drop": (lambda: ed.norm_act_drop(x, weight, bias, *running, drop_type=drop_type, p=P,
                                                   momentum=momentum, num_batches_tracked=batches),
                          [x, weight, bias], fused),
        "BatchNormActDrop2d eval": (lambda: bn_eval(x), None, ((1, 2), None)),
        "GroupNormActDrop": (lambda: gn(x), [x, gn.weight, gn.bias], fused),
        "ConvBlock(block_type=0)": (lambda: block(x), [x, block.norm.weight, block.norm.bias, block.conv.weight],
                                    ((3, 6), (6, 12))),
    }


CASES = sorted(case_calls())
VARIANTS = {"defaults": {}, "neuron": dict(drop_type="neuron"), "momentum=None": dict(momentum=None),
            "channels_last": dict(channels_last=True)}


def forward_backward(forward, inputs):
    """Forward and ``torch.autograd.grad`` with a gradient made beforehand (not counted)."""
    grad = torch.ones_like(forward())
    return lambda: torch.autograd.grad(forward(), inputs, grad)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", CASES)
def test_budget_per_call(case, variant):
    forward, inputs, (forward_budget, fwdbwd_budget) = case_calls(**VARIANTS[variant])[case]
    with ed.use_backend("triton"):
        forward()  # first call: imports, launch plans
        launches, ops = host_work(forward)
        assert len(launches) <= forward_budget[0] and len(ops) <= forward_budget[1], (launches, ops)
        assert launches, "the Triton path made no launch"
        if fwdbwd_budget is not None:
            run = forward_backward(forward, inputs)
            run()
            launches, ops = host_work(run)
            assert len(launches) <= fwdbwd_budget[0] and len(ops) <= fwdbwd_budget[1], (launches, ops)


def test_budgets_are_met_by_the_kernels_not_by_skipping_work():
    """The fused BatchNorm call is the statistics pass, their merge (which updates the running statistics)
    and the apply pass; its backward the sums pass and the input-gradient pass; no PyTorch arithmetic."""
    forward, inputs, _ = case_calls()["BatchNormActDrop2d"]
    with ed.use_backend("triton"):
        forward()
        launches, ops = host_work(forward)
        assert launches == ["_partial_moments_kernel", "_finish_moments_kernel", "_norm_act_drop_fwd_kernel"]
        assert sorted(ops) == sorted(["aten::add_", "aten::randint", "aten::empty_like", "aten::empty",
                                      "aten::empty"]), ops  # num_batches_tracked, seed, output, partials, stats
        run = forward_backward(forward, inputs)
        run()
        launches, ops = host_work(run)
        assert launches[3:] == ["_norm_act_drop_bwd_sums_kernel", "_norm_act_drop_bwd_dx_kernel"]
        assert sorted(ops[5:]) == ["aten::empty_like", "aten::zeros"], ops  # dx, the sums


def test_stubbed_launches_do_not_run_kernels():
    """The counter really replaces the launch (so the counts above are the host's work alone)."""
    x = torch.ones(4, 8)
    with ed.use_backend("triton"), stubbed_launches() as launches:
        out = ed.drop_neuron(x, 0.5, seed=3)
    assert launches == ["_drop_neuron_flat_kernel"]
    reference = ed.drop_neuron(x, 0.5, seed=3)
    assert out.shape == reference.shape and not torch.equal(out, reference)  # never written


# --- no host synchronization on the CUDA path -----------------------------------------------------

class NoHostSync(TorchDispatchMode):
    """Fails on every op that makes the host wait for the device: reading a device value
    (``.item()``, ``bool()``, ``.tolist()``), data-dependent shapes (``nonzero``) and copies to the CPU."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default, torch.ops.aten.item.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS:
            raise AssertionError(f"host sync: {func}")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            target = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device
            if isinstance(source, torch.Tensor) and source.is_cuda and target is not None \
                    and torch.device(target).type == "cpu":
                raise AssertionError(f"device-to-host copy: {func}")
        return func(*args, **kwargs)


@pytest.fixture
def eager_under_fake_tensors(monkeypatch):
    """Fake CUDA tensors, with the ops' real (Triton-path) implementations instead of their fake kernels:
    the eager path is taken as it is outside the fake mode."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from effdrop_triton.ops import _autograd

    monkeypatch.setattr(_autograd, "_dispatch_modes", lambda: 0)
    monkeypatch.setattr(_autograd, "_PLAIN", (*_autograd._PLAIN, FakeTensor))
    with FakeTensorMode(), stubbed_launches() as launches:
        yield launches


@pytest.mark.parametrize("variant", ["defaults", "neuron", "momentum=None"])
@pytest.mark.parametrize("case", CASES)
def test_cuda_path_never_syncs(eager_under_fake_tensors, case, variant):
    forward, inputs, _ = case_calls(device="cuda", **VARIANTS[variant])[case]
    with ed.use_backend("triton"), NoHostSync():
        out = forward()
        assert out.is_cuda
        if inputs is not None:
            # the op's own backward, called as the autograd engine calls it (the engine's CUDA device
            # threads need a real GPU)
            assert "effdrop" not in type(out.grad_fn).__name__, "not the eager path"
            grads = out.grad_fn.apply(torch.ones_like(out))
            assert any(g is not None and g.is_cuda for g in grads)
    assert eager_under_fake_tensors, "the Triton path made no launch"


def test_the_sync_check_catches_syncs(eager_under_fake_tensors):
    x = torch.randn(4, device="cuda")
    for sync in (lambda: x.sum().item(), lambda: bool(x[0]), lambda: x.nonzero(), lambda: x.cpu()):
        with NoHostSync(), pytest.raises(Exception):
            sync()
