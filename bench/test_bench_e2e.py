"""A whole training step: this package's blocks against the same network in PyTorch's own modules.

One step = zero_grad, forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 5e-4)
step, on CIFAR geometry (3x32x32 inputs, 10 classes) with the paper's block: block_type=0
(norm-ReLU-drop-conv), drop_type="channel", drop_rate=0.1.

Providers:

- ``effdrop``: the model zoo's network (``fused=True``: fused norm-ReLU-drop(-conv) ops), eager;
- ``effdrop_compile``: the same under ``torch.compile``;
- ``torch_modules``: ``bench.baselines.eager_twin`` of that network (same weights; nn.BatchNorm2d +
  nn.ReLU + nn.Dropout2d + nn.Conv2d), eager; checked here to give the package model's eval output;
- ``torch_modules_compile``: the twin under ``torch.compile``, the baseline of ``effdrop_compile``;
- ``effdrop_reduce_overhead`` and ``torch_modules_reduce_overhead``: the package model and its twin with
  model and optimizer step compiled in ``mode="reduce-overhead"``, each step replayed as CUDA graphs
  (``cudagraph_mark_step_begin`` per step, as ``effdrop-train --compile-mode reduce-overhead`` does), in
  bf16 autocast with channels_last, on CUDA only. The package's is compared with the twin's in the same
  mode; ``e2e_targets`` in the report adds its ratio to the eager twin and the memory it saves.

Models: WRN-16-8 and pre-activation ResNet-110 at batch 128 on CUDA; on CPU, where a step of
those takes seconds, WRN-10-2 and pre-activation ResNet-11 at batch 8 (shape_name says which
ran: "<model>-b<batch>"). WRN-28-10 at batch 128 (the peak-memory target) runs on CUDA only,
eager providers only. dtype: fp32, and on CUDA bf16 (autocast); fp16 is left out (it needs a
GradScaler). On CPU the compiled providers run in timed runs only (see CPU_COMPILE_SKIP).

Recorded per case (``record``): images/s, saved_bytes (storage autograd keeps for backward in
one forward of the model) and, on CUDA, peak_mem_bytes (``torch.cuda.max_memory_allocated``
over one step: weights, gradients, momentum and activations).
"""

import gc
import time

import pytest
import torch
import torch.nn.functional as F

from bench.baselines import eager_twin
from effdrop_triton.testing import saved_for_backward
from effdrop_triton.models import build_model

PROVIDERS = ("effdrop", "effdrop_compile", "effdrop_reduce_overhead",
             "torch_modules", "torch_modules_compile", "torch_modules_reduce_overhead")
# first = the reference of the eager package model
BASELINES = ["torch_modules", "torch_modules_compile", "torch_modules_reduce_overhead"]
REFERENCE = {"effdrop": "torch_modules", "effdrop_compile": "torch_modules_compile",
             "effdrop_reduce_overhead": "torch_modules_reduce_overhead"}
COMPILE_MODE = {"effdrop_compile": "default", "torch_modules_compile": "default",
                "effdrop_reduce_overhead": "reduce-overhead", "torch_modules_reduce_overhead": "reduce-overhead"}
GRAPH_PROVIDERS = ("effdrop_reduce_overhead", "torch_modules_reduce_overhead")  # bf16, channels_last, CUDA
BLOCK = dict(num_classes=10, block_type=0, drop_type="channel", drop_rate=0.1, fused=True)
# id: (CUDA (name, build_model name, kwargs, batch), CPU one or None)
MODELS = {
    "wrn": (("wrn16_8", "wrn", dict(depth=16, widen_factor=8), 128),
            ("wrn10_2", "wrn", dict(depth=10, widen_factor=2), 8)),
    "preresnet": (("preresnet110", "preresnet", dict(depth=110), 128), ("preresnet11", "preresnet", dict(depth=11), 8)),
    "wrn28_10": (("wrn28_10", "wrn", dict(depth=28, widen_factor=10), 128), None),
}
EAGER_ONLY = ("wrn28_10",)  # the peak-memory case: eager blocks against eager blocks
# Measured once (2026-11-26, 2 cores shared with a training run): compiling WRN-10-2's batch-8 step takes
# ~24 s for the package model (inductor cannot lower its fused ops' CPU backward, aten._local_scalar_dense:
# dynamo breaks the graph around them) and ~36 s for the twin, under the ~60 s that makes it worth a
# `make bench` run; a --benchmark-disable smoke run (make test-bench) skips them.
CPU_COMPILE_SKIP = ("torch.compile on CPU takes 25-40 s per model: compiled providers run in timed CPU runs "
                    "(make bench) only, not under --benchmark-disable")
COMPILE_RESERVE = 150  # seconds of --bench-budget a compiled case needs to start (compiling ResNet-110: minutes)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # autocast dtype


def training_step(model, optimizer, x, target, autocast_dtype, optimizer_step=None, graphs=False):
    """One step; ``optimizer_step`` replaces ``optimizer.step`` (compiled), ``graphs`` marks each step's
    start for cudagraph trees (the previous step's outputs may then be overwritten)."""
    optimizer_step = optimizer_step or optimizer.step

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer_step()

    return step


def eager_twin_checked(model, x, tol):
    """``eager_twin(model)``, checked to compute what the package model computes: the same eval-mode output,
    after one training forward has moved the running statistics off their initial values."""
    with torch.no_grad():
        model.train()(x)
        twin = eager_twin(model)
        expected, got = model.eval()(x), twin.eval()(x)
    error = (expected - got).abs().max().item()
    assert error <= tol * expected.abs().max().item(), f"eager_twin differs from the package model: {error:.3g}"
    return twin


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model_id", list(MODELS))
def test_e2e_step(request, record, device, dtype, model_id, provider):
    on_cuda = device.type == "cuda"
    config = MODELS[model_id][0 if on_cuda else 1]
    if config is None:
        pytest.skip(f"{model_id} at batch 128 is the CUDA peak-memory case; CPU runs the tiny models")
    compiled = provider in COMPILE_MODE
    graphs = provider in GRAPH_PROVIDERS
    if model_id in EAGER_ONLY and compiled:
        pytest.skip(f"{model_id} measures the eager steps' peak memory; compiled steps run on the other models")
    if dtype not in DTYPES:
        pytest.skip(f"e2e runs fp32 and bf16 autocast; {dtype} autocast needs a GradScaler")
    if not on_cuda and dtype != "fp32":
        pytest.skip(f"{dtype} runs on CUDA only; CPU runs fp32")
    if graphs and not (on_cuda and dtype == "bf16"):
        pytest.skip("reduce-overhead replays CUDA graphs: CUDA, bf16 autocast with channels_last only")
    if not on_cuda and compiled and request.config.getoption("benchmark_disable"):
        pytest.skip(CPU_COMPILE_SKIP)

    budget = request.config.getoption("bench_budget")
    if compiled and budget is not None:
        left = budget - (time.monotonic() - request.config._bench_started)
        if left < COMPILE_RESERVE:
            pytest.skip(f"{left:.0f} s of the --bench-budget left: a compile takes minutes, needs {COMPILE_RESERVE} s")

    name, builder, kwargs, batch = config
    # every case from a clean slate: no compiled code and no CUDA graph pool of an earlier case (the
    # graphs' memory stays allocated while they live, and would count in this case's peak)
    torch._dynamo.reset()
    gc.collect()
    torch.manual_seed(0)
    memory_format = torch.channels_last if graphs else torch.contiguous_format
    model = build_model(builder, **kwargs, **BLOCK).to(device, memory_format=memory_format)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, 10, (batch,), device=device)
    if provider.startswith("torch_modules"):
        # fp32 everywhere on CPU; cuDNN's TF32 convolutions round the slightly different inputs differently
        model = eager_twin_checked(model, x, 1e-4 if not on_cuda else 1e-2)
    model.train()
    compile_seconds = None
    run = model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer_step = None
    if compiled:
        run = torch.compile(model, mode=COMPILE_MODE[provider])
        if graphs:  # the whole step in graphs: the optimizer's too (its rate stays fixed here)
            optimizer_step = torch.compile(optimizer.step, mode=COMPILE_MODE[provider])
    step = training_step(run, optimizer, x, target, DTYPES[dtype], optimizer_step, graphs)
    skips_before = _cudagraph_skips()
    start = time.perf_counter()
    step()  # warm-up outside the timing: compiles, allocator caches, momentum buffers
    if on_cuda:
        torch.cuda.synchronize(device)
    if compiled:
        compile_seconds = time.perf_counter() - start
    step()
    step()  # cudagraph trees: the first call runs eagerly, the second records, the third replays

    saved = None  # a replayed graph's saved tensors live in its memory pool: its peak memory shows them
    if not graphs:
        with torch.autocast(device.type, dtype=DTYPES[dtype] or torch.float32, enabled=DTYPES[dtype] is not None):
            out, saved = saved_for_backward(lambda: run(x))
        del out  # its graph holds a forward's activations: gone before the peak-memory step
    optimizer.zero_grad(set_to_none=True)
    info = {"op": "e2e", "provider": provider, "baselines": BASELINES, "reference": REFERENCE.get(provider),
            "shape_name": f"{name}-b{batch}", "dtype": dtype, "pass": "step", "model": name, "batch": batch,
            "input": [batch, 3, 32, 32], "block": "type 0, drop-channel 0.1", "saved_bytes": saved,
            "compile_seconds": compile_seconds, "compile_mode": COMPILE_MODE.get(provider),
            "memory_format": "channels_last" if graphs else "contiguous"}
    if graphs:  # steps the cudagraph trees ran without graphs (each skip is logged with its reason)
        info["cudagraph_skips"] = _cudagraph_skips() - skips_before
    record(step, info, images=batch, replay=not graphs)


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]
