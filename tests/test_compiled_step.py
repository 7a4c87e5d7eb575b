"""The model zoo's training step under ``torch.compile(fullgraph=True)``: no graph break, nothing in the
captured graphs that a CUDA graph refuses, and the compiled step equal to the eager one.

On the CPU the ops take the fallback, which stays one opaque node per op; what a CUDA graph needs
of the rest of the step (forward, loss, backward, optimizer) is checked in the graphs that
``aot_autograd`` captures: no ``_local_scalar_dense`` (``.item()``), no ``nonzero``, no copy to the
host. On fake tensors the same step takes the Triton path (no GPU needed: the backend is told the
kernels can run), and there the graphs hold the Triton kernels themselves
(``triton_kernel_wrapper_functional``), no effdrop op, and the seeds drawn inside the graph.
"""

import copy

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
    """Eager steps against compiled steps of a copy, one per seed in ``seeds``: logits, every gradient,
    then the updated weights and the BatchNorm buffers."""
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
    as an eager step with the same seed. One step: inductor's reordered sums move values by ~1e-7, and
    from the second step on such a difference can flip a ReLU at zero, which moves a gradient past
    these tolerances without anything being wrong."""
    with inductor_config.patch(fallback_random=True, compile_threads=1):
        compare_steps(name, block_type, drop_type, lambda m: torch.compile(m, fullgraph=True), seeds=(7,))


def test_the_backend_choice_compiles_once_and_is_guarded(monkeypatch):
    """The backend decision is a constant of the traced graph: the caches the first decision fills in
    (Triton importable, ``TRITON_INTERPRET``) do not fail a guard and compile the model again at its
    second call; changing the backend does compile it again."""
    from torch._dynamo.utils import counters

    from effdrop_triton import backend

    monkeypatch.setattr(backend, "_has_triton", None)
    monkeypatch.setattr(backend, "_interpret", None)
    counters.clear()
    compiled = torch.compile(tiny("wrn", 0, "channel"), backend="eager", fullgraph=True)
    images, _ = batch()
    compiled(images)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(images)
    assert counters["stats"]["unique_graphs"] == 1
    with ed.use_backend("torch"):
        compiled(images)
    assert counters["stats"]["unique_graphs"] == 2
    marked = torch.compiler.assume_constant_result(lambda: None)
    assert all(getattr(marked, key) == getattr(backend._decide, key) for key in vars(marked)), \
        "backend._decide lacks assume_constant_result's mark"


def test_ops_list_their_kernels_for_the_compile_cache_key():
    """As a ``triton_op`` does: AOTAutograd's cache key includes the sources of the kernels each op lists,
    so a cached compiled graph is not reused after a kernel changed."""
    pytest.importorskip("triton")
    from torch._library.triton import get_triton_kernels_for_op

    from effdrop_triton.ops import _autograd

    names = {kernel.fn.__name__ for kernel in get_triton_kernels_for_op("effdrop::drop_neuron")}
    assert {"_drop_neuron_flat_kernel", "_unit_gate_kernel", "_drop_layer_kernel", "_partial_moments_kernel",
            "_norm_act_drop_fwd_kernel", "_norm_act_drop_bwd_dx_kernel"} <= names
    for op in ("drop_channel", "drop_path_cat", "layer_gate", "norm_stats", "norm_act_drop_conv2d"):
        assert get_triton_kernels_for_op(f"effdrop::{op}") is _autograd._PACKAGE_KERNELS


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


# --- the Triton path, traced on fake tensors ---------------------------------------------------------

class H100Target:
    """Stands in for Triton's GPU driver: the kernels' mutation analysis compiles them for an H100."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@pytest.fixture
def triton_path(monkeypatch):
    """Fake tensors on which the ops take the Triton path and trace it (``wrap_triton`` launches), with no
    GPU: the backend is told the kernels can run, and the analysis of what each kernel writes compiles it
    for an H100. Fake CPU tensors, so that the autograd engine traces backward too."""
    triton = pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from effdrop_triton import backend

    monkeypatch.setattr(backend, "_interpret", True)
    monkeypatch.setattr(backend, "kernels_traceable", lambda: True)
    monkeypatch.setattr(triton.runtime.driver, "_active", H100Target())
    with FakeTensorMode(), ed.use_backend("triton"):
        yield


def kernels_and_ops(recorder):
    calls = recorder.calls()
    kernels = [node for node in calls if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    return kernels, [str(node.target) for node in calls if "effdrop" in str(node.target)]


# every level at block order 0 (the fused norm-act-drop ops), and every family at order 2 (the plain ops):
# each case compiles its kernels for the mutation analysis (5-9 s)
TRITON_PATH_CASES = [case for case in LEVELS if case[1] == 0] + [(name, 2, "channel") for name in sorted(TINY)]


@pytest.mark.parametrize("name,block_type,drop_type", TRITON_PATH_CASES)
def test_triton_path_training_step_graphs_hold_the_kernels(triton_path, name, block_type, drop_type):
    """Forward, loss and backward on the Triton path: every dropout op became its kernels in both graphs,
    no effdrop op is left opaque, nothing reads a device value on the host, the only graph inputs a
    kernel writes are the running statistics (no hidden copy of an activation), and the seeds are drawn
    in the forward graph (fresh on every replay) and reused, not redrawn, by backward."""
    model = tiny(name, block_type, drop_type)
    images, targets = torch.randn(4, 3, 32, 32), torch.arange(4) % NUM_CLASSES
    recorder = GraphRecorder()
    compiled = torch.compile(model, backend=recorder.backend, fullgraph=True)
    F.cross_entropy(compiled(images), targets).backward()
    assert len(recorder.graphs) == 2
    kernels, effdrop = kernels_and_ops(recorder)
    assert kernels and not effdrop, effdrop
    assert not host_syncs(recorder.calls())
    forward, backward = recorder.graphs
    seed_draws = [[node for node in gm.graph.nodes if node.op == "call_function" and "randint" in str(node.target)]
                  for gm in (forward, backward)]
    assert seed_draws[0] and not seed_draws[1], seed_draws
    written_inputs = {name for node in kernels for name in node.kwargs["tensors_to_clone"]
                      if node.kwargs["kwargs"][name].op == "placeholder"}
    assert written_inputs <= {"running_mean_ptr", "running_var_ptr"}, written_inputs


def test_compiled_conv_block_saves_what_the_eager_op_saves(triton_path):
    """``norm_act_drop_conv2d`` decomposed into its kernels keeps its memory scheme under inductor's
    partitioner: the forward graph saves the block input, the statistics, the parameters and the seed,
    never the convolution's input, which backward rebuilds with the apply kernel."""
    from functorch.compile import min_cut_rematerialization_partition

    block = ed.ConvBlock(16, 16, 3, padding=1, block_type=0, drop_type="channel", drop_rate=0.1)
    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record, partition_fn=min_cut_rematerialization_partition)
    torch.compile(block, backend=backend, fullgraph=True)(x).sum().backward()
    forward, backward = graphs
    saved = [node for node in backward.graph.nodes if node.op == "placeholder" and "tangents" not in node.name]
    shapes = sorted(tuple(node.meta["val"].shape) for node in saved)
    assert shapes == sorted([(8, 16, 8, 8), (16, 16, 3, 3), (16,), (16,), (2, 1, 16), ()]), shapes
    rebuilds = [node for node in backward.graph.nodes
                if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    assert len(rebuilds) == 3  # the apply pass once more, then the two backward passes


@pytest.mark.parametrize("name", sorted(TINY))
def test_cuda_forward_graph_launches_the_triton_kernels(monkeypatch, name):
    """The same on fake CUDA tensors (forward only: the autograd engine needs a real GPU for CUDA
    tensors): kernels, no effdrop op, and no read of a device value or copy to the host."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from effdrop_triton import backend

    monkeypatch.setitem(backend._supported_cuda_devices, 0, True)
    monkeypatch.setattr(backend, "kernels_traceable", lambda: True)
    with FakeTensorMode(), torch.device("cuda"), ed.use_backend("triton"):
        model = tiny(name, 0, "channel")
        images, targets = torch.randn(4, 3, 32, 32), torch.arange(4) % NUM_CLASSES
        recorder = GraphRecorder()
        step = torch.compile(lambda x, y: F.cross_entropy(model(x), y), backend=recorder.backend, fullgraph=True)
        with torch.no_grad():
            assert step(images, targets).is_cuda
    kernels, effdrop = kernels_and_ops(recorder)
    assert kernels and not effdrop, effdrop
    assert not host_syncs(recorder.calls())
