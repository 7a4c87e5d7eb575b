"""The model zoo's training step under ``torch.compile(fullgraph=True)``: no graph break, nothing in the
captured graphs that a CUDA graph refuses, and the compiled step equal to the eager one.

On the CPU the ops take the fallback, which stays one opaque node per op; what a CUDA graph needs
of the rest of the step (forward, loss, backward, optimizer) is checked in the graphs that
``aot_autograd`` captures: no ``_local_scalar_dense`` (``.item()``), no ``nonzero``, no copy to the
host. On fake CUDA tensors the same forward takes the Triton path, and there the graph holds the
Triton kernels themselves (``triton_kernel_wrapper_functional``) and no effdrop op.
"""

import copy
import logging

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import effdrop_triton as ed
from conftest import INTERPRET
from effdrop_triton.models import build_model
from test_models import SUPPORTED, TINY

if INTERPRET:
    pytest.skip("the fallback's compiled graphs; the interpreter's kernels are not traceable", allow_module_level=True)

NUM_CLASSES = 5
HOST_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}
# the compile tests' tolerances (tests/test_blocks.py): inductor may reorder fp32 sums
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
LEVELS = [(name, block_type, drop_type) for name in TINY for block_type in range(4) for drop_type in SUPPORTED[name]]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only add waiting
    yield
    torch.set_num_threads(threads)
    torch._dynamo.reset()


class GraphRecorder:
    """An ``aot_eager`` backend that keeps every forward and backward graph it runs."""

    def __init__(self):
        self.graphs = []

        def record(gm, example_inputs):
            self.graphs.append(gm)
            return make_boxed_func(gm.forward)

        self.backend = aot_autograd(fw_compiler=record, bw_compiler=record)

    def calls(self):
        return [node for gm in self.graphs for node in gm.graph.nodes if node.op == "call_function"]


def host_syncs(nodes):
    """The nodes that make the host wait for the device: value reads and device-to-host copies."""
    found = []
    for node in nodes:
        if node.target in HOST_SYNCS:
            found.append(str(node.target))
        elif node.target in (torch.ops.aten._to_copy.default, torch.ops.prims.device_put.default):
            source, device = node.args[0].meta.get("val"), node.kwargs.get("device", node.args[1:2] or None)
            if source is not None and source.device.type != "cpu" and device is not None \
                    and torch.device(device[0] if isinstance(device, (list, tuple)) else device).type == "cpu":
                found.append(f"{node.target} to the host")
    return found


def tiny(name, block_type, drop_type, **kwargs):
    torch.manual_seed(0)
    return build_model(name, **TINY[name], num_classes=NUM_CLASSES, block_type=block_type, drop_type=drop_type,
                       drop_rate=0.25, **kwargs)


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % NUM_CLASSES


def training_step(model, optimizer_step, images, targets):
    """Forward, loss, backward and the optimizer step; returns the logits and the gradients."""
    logits = model(images)
    F.cross_entropy(logits, targets).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer_step()
    return logits, grads


def compare_steps(name, block_type, drop_type, compile_model, compile_step=lambda step: step, seeds=(7, 8)):
    """Two eager steps against two compiled steps of a copy, with the same seeds: logits, every
    gradient, the updated weights and the BatchNorm buffers."""
    eager = tiny(name, block_type, drop_type)
    compiled = copy.deepcopy(eager)
    images, targets = batch()
    models = []
    for model, wrap_model, wrap_step in ((eager, lambda m: m, lambda s: s), (compiled, compile_model, compile_step)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        run_model, run_step = wrap_model(model), wrap_step(optimizer.step)
        results = []
        for seed in seeds:
            torch.manual_seed(seed)
            results.append(training_step(run_model, run_step, images, targets))
            optimizer.zero_grad(set_to_none=False)
        models.append((model, results))
    (_, expected), (_, actual) = models
    for (logits, grads), (logits_ref, grads_ref) in zip(actual, expected):
        torch.testing.assert_close(logits, logits_ref, **TOLERANCE)
        for grad, grad_ref, (param_name, _) in zip(grads, grads_ref, eager.named_parameters()):
            torch.testing.assert_close(grad, grad_ref, **TOLERANCE, msg=lambda m: f"{param_name}: {m}")
    for (key, value), value_ref in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(value, value_ref, **TOLERANCE, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name,block_type,drop_type", LEVELS)
def test_training_step_has_no_graph_break_and_no_host_sync(name, block_type, drop_type):
    """aot_eager, fullgraph: forward, loss and backward of every family x block order x level, compared
    with eager steps; the captured forward and backward graphs read nothing on the host."""
    recorder = GraphRecorder()
    compare_steps(name, block_type, drop_type, lambda m: torch.compile(m, backend=recorder.backend, fullgraph=True))
    assert len(recorder.graphs) == 2, "one forward and one backward graph (a graph break makes more)"
    assert not host_syncs(recorder.calls())
    effdrop_ops = {str(node.target) for node in recorder.calls() if "effdrop" in str(node.target)}
    assert effdrop_ops, "the dropout ops are nodes of the graph"


@pytest.mark.parametrize("name", sorted(TINY))
def test_optimizer_step_compiles_without_host_sync(name):
    """The SGD step (momentum, weight decay) compiled on its own, as ``effdrop-train --compile-mode`` does
    (``Optimizer.step`` breaks the graph on purpose around the update, so not fullgraph): one graph for
    the first step, which creates the momentum buffers, and one for every later step; they read nothing
    on the host, and the weights after three steps equal eager ones."""
    recorder = GraphRecorder()
    compare_steps(name, 0, "channel", lambda m: torch.compile(m, backend="aot_eager", fullgraph=True),
                  lambda step: torch.compile(step, backend=recorder.backend), seeds=(7, 8, 9))
    assert len(recorder.graphs) == 2
    assert not host_syncs(recorder.calls())


# every family at block orders 0 and 2, the levels spread over them so that each level is compiled:
# an inductor compile of a training step takes about 40 s on CI's two cores, 26 of them would take 17 min
INDUCTOR_CASES = [("wrn", 0, "neuron"), ("wrn", 2, "layer"), ("preresnet", 0, "layer"), ("preresnet", 2, "channel"),
                  ("resnext", 0, "path"), ("resnext", 2, "layer"), ("densenet", 0, "channel"), ("densenet", 2, "path")]


@pytest.mark.parametrize("name,block_type,drop_type", INDUCTOR_CASES)
def test_inductor_training_step_equals_eager(name, block_type, drop_type):
    """Inductor, fullgraph, ``fallback_random``: the same logits, gradients, weights and running statistics
    as eager steps with the same seeds."""
    with inductor_config.patch(fallback_random=True, compile_threads=1):
        compare_steps(name, block_type, drop_type, lambda m: torch.compile(m, fullgraph=True))


def test_activation_checkpointing_inside_a_compiled_step_recomputes_the_masks():
    """A checkpointed dropout region inside a compiled model: backward's recomputation draws the same
    masks as the forward (the seed comes from the restored generator), so the gradients equal eager
    ones without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return checkpoint(self.inner, x, use_reentrant=False)

    torch.manual_seed(0)
    inner = torch.nn.Sequential(ed.ConvBlock(3, 8, 3, padding=1, drop_type="neuron", drop_rate=0.5),
                                ed.ConvBlock(8, 8, 3, padding=1, drop_type="channel", drop_rate=0.5),
                                ed.DropNeuron(0.5))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    results = []
    for model in (inner, torch.compile(Checkpointed(inner), backend="aot_eager", fullgraph=True)):
        torch.manual_seed(3)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in inner.parameters()]))
        x.grad = None
        inner.zero_grad()
    (out_ref, dx_ref, grads_ref), (out, dx, grads) = results
    assert (out_ref == 0).float().mean() > 0.3, "dropout is active"
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(dx, dx_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref)


# --- the Triton path, traced on fake CUDA tensors ---------------------------------------------------

@pytest.fixture
def fake_cuda(monkeypatch):
    """FakeTensorMode with CUDA tensors (no GPU needed); the backend takes the device as supported."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from effdrop_triton import backend

    monkeypatch.setitem(backend._supported_cuda_devices, 0, True)
    # without a GPU, the kernels' mutation analysis cannot compile them: every argument counts as written
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    with FakeTensorMode(), torch.device("cuda"):
        yield


def kernels_and_ops(recorder):
    kernels = [node for node in recorder.calls() if "triton_kernel_wrapper" in str(node.target)]
    effdrop = [str(node.target) for node in recorder.calls() if "effdrop" in str(node.target)]
    return kernels, effdrop


@pytest.mark.parametrize("name,block_type,drop_type", [case for case in LEVELS if case[1] in (0, 2)])
def test_cuda_forward_graph_launches_the_triton_kernels(fake_cuda, name, block_type, drop_type):
    """A training-mode forward (and loss) on the Triton path: every dropout op became its kernels, no
    effdrop op is left opaque, and nothing reads a device value on the host."""
    with ed.use_backend("triton"):
        model = tiny(name, block_type, drop_type)
        images, targets = torch.randn(4, 3, 32, 32), torch.arange(4) % NUM_CLASSES
        recorder = GraphRecorder()
        step = torch.compile(lambda x, y: F.cross_entropy(model(x), y), backend=recorder.backend, fullgraph=True)
        with torch.no_grad():
            loss = step(images, targets)
    assert loss.is_cuda
    kernels, effdrop = kernels_and_ops(recorder)
    assert kernels and not effdrop, effdrop
    assert not host_syncs(recorder.calls())


def _backward_calls(x, shortcut, seed):
    """The backward ops, called as their autograd formulas call them (Triton path)."""
    ops = torch.ops.effdrop
    C = x.shape[1]
    weight, bias = torch.ones(C), torch.zeros(C)
    stats = torch.stack((x.mean((0, 2, 3)), x.var((0, 2, 3)))).view(2, 1, C)
    return {
        "drop_neuron": lambda: ops.drop_neuron(x, seed, 0.1, True),
        "drop_channel": lambda: ops.drop_channel(x, seed, 0.1, True),
        "drop_path_groups": lambda: ops.drop_path_groups(x, seed, 0.1, 4, True, True),
        "drop_path_split": lambda: ops.drop_path_split(x, seed, 0.1, True, [C // 2, C // 2], True),
        "layer_gate": lambda: ops.layer_gate(x, seed, 0.1, True, True),
        "norm_act_drop_backward": lambda: ops.norm_act_drop_backward(shortcut, x, weight, bias, stats, seed, 0, 1e-5,
                                                                     True, 2, 0.1, True, True),
        "norm_act_drop_backward neuron, GroupNorm": lambda: ops.norm_act_drop_backward(
            shortcut, x, weight, bias, torch.zeros(2, x.shape[0], 4), seed, 4, 1e-5, True, 1, 0.1, True, True),
    }


@pytest.mark.parametrize("case", sorted(_backward_calls(*[torch.zeros(2, 8, 2, 2)] * 2, torch.zeros((), dtype=torch.int64))))
def test_cuda_backward_ops_become_their_kernels(fake_cuda, case):
    """The backward formulas' ops on the Triton path trace into kernels too (the autograd engine itself
    needs a real GPU, so each is traced on its own)."""
    x, shortcut = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    seed = torch.randint(0, 2**62, (), dtype=torch.int64)
    call = _backward_calls(x, shortcut, seed)[case]
    recorder = GraphRecorder()
    torch.compile(call, backend=recorder.backend, fullgraph=True)()
    kernels, effdrop = kernels_and_ops(recorder)
    assert kernels and not effdrop, effdrop
    assert not host_syncs(recorder.calls())
