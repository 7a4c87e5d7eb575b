"""The benchmark grid, its skips, and the ``measure`` fixture every op benchmark uses.

Tests take ``provider`` (parametrized in their own file) and ``shape``, ``dtype``,
``pass_`` (parametrized here for every test that asks for them), build inputs with
``make_input`` and hand them to ``measure``, which times the pass and stores in
``benchmark.extra_info``:

- op, provider, pass, shape (with layout), dtype, baselines (the op's, first = reference)
- device, torch / triton / effdrop_triton versions, copy_gbps (CUDA device-to-device
  copy bandwidth, read + write, measured once per session; None on CPU)
- bytes_moved: the traffic an ideal implementation needs, the same for every provider
  so that GB/s (= bytes_moved / mean, computed by bench.report) compares like with like.
  Forward = inputs read + output written; backward = output gradient read + input
  gradients written (drop_layer writes only the branch's: the shortcut's gradient is
  the output gradient itself); fwdbwd = both. Masks, seeds and RNG state are not
  counted: what a provider spends on them shows up as lower GB/s.
- saved_bytes: storage kept for backward by one forward (``saved_tensors_hooks``,
  deduplicated by storage, so an input saved by reference counts in full)
- peak_mem_bytes: ``torch.cuda.max_memory_allocated`` over one timed call; None on CPU
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform

import pytest
import torch

import effdrop_triton
from bench.baselines import BASELINES, PACKAGE

P = 0.1
SHAPES = {  # name: ((N, C, H, W), channels_last)
    "small": ((32, 64, 8, 8), False),
    "cifar": ((128, 160, 32, 32), True),
    "large": ((64, 256, 64, 64), False),  # 64M elements
    "cpu4m": ((16, 64, 64, 64), False),  # 4M elements: the shape of the CPU ratio claims
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("fwd", "bwd", "fwdbwd")


def pytest_generate_tests(metafunc):
    for name, values in (("shape", SHAPES), ("dtype", DTYPES), ("pass_", PASSES)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, list(values))


def skip_reason(on_cuda: bool, provider, shape, dtype):
    """Why a case does not run on this machine, or None. CPU runs only small and cpu4m in fp32."""
    if provider == "triton" and not on_cuda:
        return "triton provider needs a CUDA GPU (the TRITON_INTERPRET=1 interpreter is far too slow to benchmark)"
    if on_cuda:
        return "cpu4m is the CPU-only ratio shape" if shape == "cpu4m" else None
    if shape == "large":
        return "large (64M elements) runs on CUDA only: too slow on CPU"
    if shape == "cifar":
        return "cifar runs on CUDA only; CPU runs small and cpu4m"
    if dtype != "fp32":
        return f"{dtype} runs on CUDA only; CPU runs fp32"
    return None


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _skip_unsupported(request, device):
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if "shape" in params:
        reason = skip_reason(device.type == "cuda", params.get("provider"), params["shape"], params.get("dtype"))
        if reason:
            pytest.skip(reason)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"cpu: {model or platform.machine()}, {torch.get_num_threads()} threads"


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="session")
def copy_gbps(device):
    """Device-to-device copy bandwidth in GB/s (bytes read + written), the roofline for these ops."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB: far beyond L2
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    return 2 * src.numel() / seconds / 1e9


@pytest.fixture(scope="session")
def environment(device, copy_gbps):
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "effdrop_triton": effdrop_triton.__version__,
        "copy_gbps": copy_gbps,
    }


@pytest.fixture
def make_input(device, shape, dtype):
    """Factory for leaf inputs of the case's shape, dtype and layout that require grad.

    ``make_input()`` gives one (N, C, H, W) tensor; ``make_input(split=k)`` gives k
    separate tensors of C/k channels each (the branches of a multi-path block).
    """
    (n, c, h, w), channels_last = SHAPES[shape]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)

    def make(split=None):
        def one(channels):
            x = torch.empty((n, channels, h, w), device=device, dtype=DTYPES[dtype], memory_format=memory_format)
            return x.normal_().requires_grad_()

        return one(c) if split is None else [one(c // split) for _ in range(split)]

    return make


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_for_backward(call):
    """Run ``call()`` once; return its output and the bytes of the storages autograd saved for backward."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call()
    return out, sum(storages.values())


def pass_function(pass_, call, out, leaves):
    """The function to time for a pass. ``out`` is one output of ``call()``, whose graph bwd reuses."""
    if pass_ == "fwd":
        return call
    grad = torch.randn_like(out)

    def clear_grads():  # a fresh .grad each call: no accumulation kernel in the timing
        for t in leaves:
            t.grad = None

    if pass_ == "bwd":
        def backward():
            clear_grads()
            out.backward(grad, retain_graph=True)

        return backward

    def forward_backward():
        clear_grads()
        call().backward(grad)

    return forward_backward


def synchronized(fn, device):
    """On CUDA, wait for the kernels inside the timed function: the wall clock only sees launches otherwise."""
    if device.type != "cuda":
        return fn

    def timed():
        fn()
        torch.cuda.synchronize(device)

    return timed


def peak_memory(fn, device):
    """Warm ``fn`` up (Triton compiles on first call) and return the CUDA peak of one more call; None on CPU."""
    if device.type != "cuda":
        return None
    fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


@pytest.fixture
def measure(benchmark, environment, device, shape, dtype, pass_):
    """``measure(op, provider, args, grad_written=None)`` times ``op(*args, P)`` for the case's pass.

    ``args`` holds tensors or lists of tensors (drop_path's branches); all of them are
    leaves whose gradients backward writes, unless ``grad_written`` names fewer.
    """

    def run(op, provider, args, grad_written=None):
        fn = getattr(effdrop_triton, op) if provider in PACKAGE else BASELINES[op][provider]
        leaves = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
        grad_written = leaves if grad_written is None else list(grad_written)
        benchmark.group = f"{op}-{shape}-{dtype}-{pass_}"
        backend = effdrop_triton.use_backend(provider) if provider in PACKAGE else contextlib.nullcontext()
        with backend:  # held while timing: bwd's backend is fixed at forward, fwd/fwdbwd read it per call
            def call():
                return fn(*args, P)

            out, saved_bytes = saved_for_backward(call)
            fwd_bytes = _nbytes(leaves) + _nbytes([out])
            bwd_bytes = _nbytes([out]) + _nbytes(grad_written)
            timed = pass_function(pass_, call, out, leaves)
            benchmark.extra_info.update(environment)
            benchmark.extra_info.update({
                "op": op, "provider": provider, "baselines": list(BASELINES[op]), "pass": pass_,
                "shape": list(SHAPES[shape][0]), "shape_name": shape, "channels_last": SHAPES[shape][1],
                "dtype": dtype, "p": P,
                "bytes_moved": {"fwd": fwd_bytes, "bwd": bwd_bytes, "fwdbwd": fwd_bytes + bwd_bytes}[pass_],
                "saved_bytes": saved_bytes,
                "peak_mem_bytes": peak_memory(timed, device),
            })
            benchmark(synchronized(timed, device))

    return run
