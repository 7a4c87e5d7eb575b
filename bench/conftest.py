"""The benchmark grid, its skips and command-line filters, and the fixtures every benchmark uses.

Op benchmarks take ``provider`` (parametrized in their own file) and ``shape``, ``dtype``,
``pass_`` (parametrized here for every test that asks for them), build inputs with
``make_input`` and hand them to ``measure``. Any other benchmark (a whole training step,
say) calls ``record`` directly. Both store in ``benchmark.extra_info``:

- op, provider, pass, shape_name, dtype, baselines (the op's, first = reference)
- environment: device, torch / triton / effdrop_triton / python versions, CUDA runtime
  and compute capability on CUDA
- bytes_moved: the traffic an ideal implementation needs, the same for every provider
  so that GB/s compares like with like. Forward = inputs read + output written;
  backward = output gradient read + input gradients written (drop_layer writes only the
  branch's: the shortcut's gradient is the output gradient itself); fwdbwd = both.
  Masks, seeds and RNG state are not counted: what a provider spends on them shows up
  as lower GB/s.
- gbps = bytes_moved / median time; copy_gbps: the bandwidth (bytes read + written / the best
  of at least 15 timed calls) of a plain ``dst.copy_(src)`` of a tensor the size of the op's
  output (copy_bytes), on the same device, timed the same way in the same run: the roofline
  of one pass over such a tensor, with the same cache behaviour; copy_pct = 100 * gbps / copy_gbps
- saved_bytes: storage kept for backward by one forward (``saved_tensors_hooks``,
  deduplicated by storage, so an input saved by reference counts in full)
- peak_mem_bytes: ``torch.cuda.max_memory_allocated`` over one call, and
  peak_over_inputs_bytes: the part of it above what was allocated before the call.
  None on CPU, where PyTorch keeps no allocator statistics (peak_mem_note says so).
- do_bench_ms: on CUDA, ``triton.testing.do_bench`` quantiles (20/50/80 %, L2 flushed
  between calls, CUDA events) as a cross-check of the synchronized wall-clock timing.
- graph_ms: on CUDA, the same quantiles of the case's function captured once into a CUDA graph
  and replayed: GPU time without the host's time to issue each call (every provider alike); or
  graph_error ("<exception type>: <first line>") where capture failed (a host sync, a
  graph-unsafe op: for this package's triton provider, a finding).

Options (see ``pytest bench --help``): ``--bench-shapes``, ``--bench-dtypes``,
``--bench-passes`` keep part of the grid; ``--bench-priority`` runs the headline cases
first (shape and dtype as PRIORITY lists, then fwd+bwd before fwd and bwd);
``--bench-budget`` skips the cases that would start after that many seconds;
``--bench-no-rounds`` keeps the JSON small; ``--bench-no-graphs`` leaves out the CUDA graph timing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import time

import pytest
import torch

import effdrop_triton
from bench.baselines import BASELINES, PACKAGE
from effdrop_triton.testing import saved_for_backward

P = 0.1
SHAPES = {  # name: ((N, C, H, W), channels_last)
    "small": ((32, 64, 8, 8), False),  # launch-bound
    "cifar": ((128, 160, 32, 32), True),  # a WRN-16-8 activation on CIFAR
    "large": ((64, 256, 64, 64), False),  # 64M elements: bandwidth-bound
    "cpu4m": ((16, 64, 64, 64), False),  # 4M elements: the shape of the CPU ratio claims
    "bn256": ((128, 256, 32, 32), True),  # the fused norm_act_drop's GPU target shape
}
# shapes that only the suites naming them in a module-level EXTRA_SHAPES run (the grid stays lean)
OPT_IN_SHAPES = ("bn256",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("fwd", "bwd", "fwdbwd")
# --bench-priority order: the headline cases (the README's GPU targets) first, so a run cut
# short by its budget still has them; pairs not listed run last, in collection order.
PRIORITY = (("cifar", "bf16"), ("bn256", "bf16"), ("large", "bf16"), ("cifar", "fp32"), ("large", "fp32"), ("small", "bf16"),
            ("small", "fp32"), ("cifar", "fp16"), ("large", "fp16"), ("small", "fp16"))
PASS_PRIORITY = ("fwdbwd", "fwd", "bwd")  # within a (shape, dtype): what training pays first
HEADLINE_OPS_BEFORE_STEPS = 2.5  # eager bf16 training steps rank after PRIORITY[:3] (the bf16 headline op cases)
COPY_MIN_SECONDS = 0.05  # time spent on each copy-bandwidth reference, per tensor size


def pytest_addoption(parser):
    group = parser.getgroup("effdrop_triton benchmarks")
    group.addoption("--bench-shapes", help=f"comma-separated subset of {', '.join(SHAPES)}")
    group.addoption("--bench-dtypes", help=f"comma-separated subset of {', '.join(DTYPES)}")
    group.addoption("--bench-passes", help=f"comma-separated subset of {', '.join(PASSES)}")
    group.addoption("--bench-priority", action="store_true", help="run the headline shapes and dtypes first")
    group.addoption("--bench-budget", type=float, metavar="SECONDS",
                    help="skip the benchmarks that would start this long after the session began")
    group.addoption("--bench-no-rounds", action="store_true",
                    help="leave each round's time out of --benchmark-json (statistics stay): thousands of "
                         "microsecond GPU rounds per case would make the file tens of MB")
    group.addoption("--bench-no-graphs", action="store_true",
                    help="on CUDA, skip timing each case replayed as a CUDA graph (graph_ms): a shorter run")


def _selected(config, option: str, values) -> list:
    text = config.getoption(option)
    if not text:
        return list(values)
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in values]
    if unknown:
        raise pytest.UsageError(f"--{option.replace('_', '-')}: unknown {unknown}, valid: {list(values)}")
    return chosen


def pytest_generate_tests(metafunc):
    for name, option, values in (("shape", "bench_shapes", SHAPES), ("dtype", "bench_dtypes", DTYPES),
                                 ("pass_", "bench_passes", PASSES)):
        if name in metafunc.fixturenames:
            chosen = _selected(metafunc.config, option, values)
            if name == "shape":
                extra = getattr(metafunc.module, "EXTRA_SHAPES", ())
                chosen = [v for v in chosen if v not in OPT_IN_SHAPES or v in extra]
            metafunc.parametrize(name, chosen)


def pytest_configure(config):
    config._bench_started = time.monotonic()


def pytest_collection_modifyitems(config, items):
    if not config.getoption("bench_priority"):
        return

    def rank(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        key, pass_ = (params.get("shape"), params.get("dtype")), params.get("pass_")
        grid = (PRIORITY.index(key) if key in PRIORITY else len(PRIORITY),
                PASS_PRIORITY.index(pass_) if pass_ in PASS_PRIORITY else len(PASS_PRIORITY))
        if key[0] is not None:
            return (*grid, 0, False)
        compiled = str(params.get("provider", "")).endswith("_compile")
        if key[1] == "bf16" and not compiled:
            # the eager bf16 training steps hold GPU targets (WRN-28-10 peak memory): right after the
            # headline bf16 op cases, so a run cut short by its budget still has them
            return (HEADLINE_OPS_BEFORE_STEPS, 0, 0, False)
        # the other training steps: after the grid, bf16 first, eager providers before compiled ones
        dtypes = [d for pair in PRIORITY for d in pair[1:]]
        return (*grid, dtypes.index(key[1]) if key[1] in dtypes else len(dtypes), compiled)

    items.sort(key=rank)  # stable: the providers of one case stay together, in file order


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if config.getoption("bench_no_rounds"):
        for bench in output_json["benchmarks"]:
            bench["stats"].pop("data", None)


def skip_reason(on_cuda: bool, provider, shape, dtype):
    """Why a case does not run on this machine, or None. CPU runs only small and cpu4m in fp32."""
    if provider == "triton" and not on_cuda:
        return "triton provider needs a CUDA GPU (the TRITON_INTERPRET=1 interpreter is far too slow to benchmark)"
    if on_cuda:
        return "cpu4m is the CPU-only ratio shape" if shape == "cpu4m" else None
    if shape == "large":
        return "large (64M elements) runs on CUDA only: too slow on CPU"
    if shape in ("cifar", "bn256"):
        return f"{shape} runs on CUDA only; CPU runs small and cpu4m"
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
    budget = request.config.getoption("bench_budget")
    if budget is not None and "benchmark" in request.fixturenames:
        if time.monotonic() - request.config._bench_started > budget:
            pytest.skip(f"over the --bench-budget of {budget:g} s")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    threads = torch.get_num_threads()
    return f"cpu: {model or platform.machine()}, {threads} thread{'s' if threads != 1 else ''}"


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="session")
def environment(device):
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "effdrop_triton": effdrop_triton.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(device)
    return env


def synchronized(fn, device):
    """On CUDA, wait for the kernels inside the timed function: the wall clock only sees launches otherwise."""
    if device.type != "cuda":
        return fn

    def timed():
        fn()
        torch.cuda.synchronize(device)

    return timed


def _best_seconds(fn, min_seconds: float, min_calls: int = 15) -> float:
    """Shortest wall time of ``fn()`` over at least ``min_calls`` calls and ``min_seconds``, after one warm-up:
    a roofline is what the device can do, and on a shared machine only preemption makes a call slower."""
    fn()
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        best, calls = min(best, time.perf_counter() - t0), calls + 1
    return best


@pytest.fixture(scope="session")
def copy_gbps(device):
    """``copy_gbps(nbytes)``: bandwidth in GB/s (bytes read + written) of copying an nbytes tensor on the
    benchmark device, best of calls timed like the benchmarks (synchronized wall clock); cached per size."""
    cache = {}

    def measure_copy(nbytes: int) -> float:
        if nbytes not in cache:
            src = torch.empty(max(1, nbytes), dtype=torch.uint8, device=device).fill_(1)
            dst = torch.empty_like(src)
            seconds = _best_seconds(synchronized(lambda: dst.copy_(src), device), COPY_MIN_SECONDS)
            cache[nbytes] = 2 * src.numel() / seconds / 1e9
        return cache[nbytes]

    return measure_copy


def peak_memory(fn, device):
    """Warm ``fn`` up (Triton compiles on first call); return the CUDA peak of one more call and its part
    above what was allocated before it; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak, peak - before


def _do_bench_ms(fn):
    from triton.testing import do_bench

    return dict(zip(("p20", "p50", "p80"), do_bench(fn, warmup=5, rep=20, quantiles=[0.2, 0.5, 0.8])))


GRAPH_WARMUP = 3  # eager calls before capture: Triton compiles and autotunes, cuBLAS handles, allocator blocks


@contextlib.contextmanager
def _stale_streams_overridden():
    """Autograd nodes keep the stream they were made on: those of bwd's fixed forward, and the leaves' gradient
    accumulators that forward keeps alive, the default stream, which no capture can take in. PyTorch's switch
    runs them on the capturing stream instead; a release without it refuses such a capture (graph_error)."""
    override = getattr(torch.autograd.graph, "set_override_stale_capture_stream", None)
    if override is None:
        yield
        return
    before = torch._C._override_stale_capture_stream()
    override(True)
    try:
        yield
    finally:
        override(before)


def _raised(fn):
    """The exception ``fn()`` raises, or None."""
    try:
        fn()
    except Exception as error:
        return error
    return None


def capture_graph(fn, warmup: int = GRAPH_WARMUP, cuda=torch.cuda):
    """``fn`` captured once into a CUDA graph after ``warmup`` calls, both on one side stream (PyTorch's recipe;
    ``cuda`` is ``torch.cuda``, a fake in the tests). A call that fails inside the capture invalidates it, and
    ``capture_end`` then raises an error of its own: the call's is the one raised here. Entered here, the side
    stream's context is left even when ``capture_end`` raises, which makes ``cuda.graph`` skip leaving its own."""
    side = cuda.Stream()
    side.wait_stream(cuda.current_stream())
    graph = cuda.CUDAGraph()
    with cuda.stream(side):
        for _ in range(warmup):
            fn()
        error = None
        try:
            with _stale_streams_overridden(), cuda.graph(graph, stream=side):
                error = _raised(fn)
        except Exception as end_error:
            raise error or end_error
        if error:
            raise error
    cuda.current_stream().wait_stream(side)
    return graph


def _error_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def graph_replay_ms(fn, timer=_do_bench_ms, capture=capture_graph, synchronize=torch.cuda.synchronize) -> dict:
    """``{"graph_ms": timer(replay)}`` of ``fn`` captured once, the graph freed afterwards (its private memory
    pool would pile up over a run); ``{"graph_error": ...}`` when capture or replay fails, so that the benchmark
    still records its eager times and the next case finds the device idle."""
    try:
        graph = capture(fn)
        try:
            return {"graph_ms": timer(graph.replay)}
        finally:
            del graph  # now: a failed replay's traceback would keep it until the handler below is done
    except Exception as error:
        with contextlib.suppress(Exception):  # a kernel fault is sticky: the next CUDA call reports it
            synchronize()
        return {"graph_error": _error_line(error)}


@pytest.fixture
def record(benchmark, environment, device, copy_gbps, pytestconfig):
    """``record(fn, info, bytes_moved=None, copy_bytes=None, images=None, replay=True)`` times ``fn()`` with
    pytest-benchmark.

    ``info`` holds the fields the report groups by (op, provider, baselines, shape_name,
    dtype, pass); ``bytes_moved`` adds GB/s, ``copy_bytes`` (the size of the op's output)
    the copy-bandwidth reference and the share of it reached; ``images``
    (samples per call, for a training step) adds images/s; ``replay=False`` for a function that replays
    CUDA graphs itself (a graph cannot capture another's replay). The environment, peak memory
    and, on CUDA, do_bench quantiles and, unless ``--bench-no-graphs``, those of ``fn`` replayed as a CUDA
    graph (or why it could not be captured) are added here.
    """

    def run(fn, info, bytes_moved=None, copy_bytes=None, images=None, replay=True):
        benchmark.group = "-".join(str(info.get(k)) for k in ("op", "shape_name", "dtype", "pass"))
        extra = benchmark.extra_info
        extra.update(environment)
        extra.update(info)
        peak, over_inputs = peak_memory(fn, device)
        extra.update({"bytes_moved": bytes_moved, "images": images, "peak_mem_bytes": peak,
                      "peak_over_inputs_bytes": over_inputs})
        if peak is None:
            extra["peak_mem_note"] = "n/a on CPU: PyTorch keeps no allocator statistics there"
        result = benchmark(synchronized(fn, device))
        if benchmark.stats is None:  # --benchmark-disable: one plain call, nothing timed
            return result
        median = benchmark.stats.stats.median
        extra["median_seconds"] = median
        if bytes_moved:
            extra["gbps"] = bytes_moved / median / 1e9
            if copy_bytes:
                roof = copy_gbps(copy_bytes)
                extra.update({"copy_bytes": copy_bytes, "copy_gbps": roof, "copy_pct": 100.0 * extra["gbps"] / roof})
        if images:
            extra["images_per_s"] = images / median
        if device.type == "cuda":
            extra["do_bench_ms"] = _do_bench_ms(fn)
            if replay and not pytestconfig.getoption("bench_no_graphs"):
                extra.update(graph_replay_ms(fn))
        return result

    return run


@pytest.fixture
def make_input(device, shape, dtype):
    """Factory for leaf inputs of the case's shape, dtype and layout that require grad.

    ``make_input()`` gives one (N, C, H, W) tensor; ``make_input(split=k)`` gives k
    separate tensors of C/k channels each (the branches of a multi-path block);
    ``make_input(channels=c)`` a (c,) fp32 tensor (per-channel parameters, kept in fp32 as autocast keeps them).
    """
    (n, c, h, w), channels_last = SHAPES[shape]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)

    def make(split=None, channels=None):
        def one(channels):
            x = torch.empty((n, channels, h, w), device=device, dtype=DTYPES[dtype], memory_format=memory_format)
            return x.normal_().requires_grad_()

        if channels is not None:
            return torch.randn(channels, device=device).requires_grad_()
        return one(c) if split is None else [one(c // split) for _ in range(split)]

    return make


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


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


@pytest.fixture
def measure(record, shape, dtype, pass_):
    """``measure(op, provider, args, grad_written=None, *, fn=None, baselines=None, bytes_moved=None)``
    times ``fn(*args, P)`` for the case's pass.

    ``args`` holds tensors or lists of tensors (drop_path's branches); all of them are
    leaves whose gradients backward writes, unless ``grad_written`` names fewer. By default
    ``fn`` is ``effdrop_triton.<op>`` for this package's providers (run under
    ``use_backend(provider)``) and ``BASELINES[op][provider]`` otherwise, ``baselines`` is
    ``list(BASELINES[op])``, and ``bytes_moved`` ({"fwd": ..., "bwd": ...}, fwdbwd = their
    sum unless given) is the inputs + output estimate described at the top of this file.
    """

    def run(op, provider, args, grad_written=None, *, fn=None, baselines=None, bytes_moved=None):
        if fn is None:
            fn = getattr(effdrop_triton, op) if provider in PACKAGE else BASELINES[op][provider]
        leaves = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
        grad_written = leaves if grad_written is None else list(grad_written)
        backend = effdrop_triton.use_backend(provider) if provider in PACKAGE else contextlib.nullcontext()
        with backend:  # held while timing: bwd's backend is fixed at forward, fwd/fwdbwd read it per call
            def call():
                return fn(*args, P)

            out, saved_bytes = saved_for_backward(call)
            if bytes_moved is None:
                bytes_moved = {"fwd": nbytes(leaves) + nbytes([out]), "bwd": nbytes([out]) + nbytes(grad_written)}
            bytes_moved = {"fwdbwd": bytes_moved["fwd"] + bytes_moved["bwd"], **bytes_moved}
            info = {"op": op, "provider": provider, "baselines": list(BASELINES.get(op, {}) if baselines is None
                                                                      else baselines),
                    "pass": pass_, "shape": list(SHAPES[shape][0]), "shape_name": shape,
                    "channels_last": SHAPES[shape][1], "dtype": dtype, "p": P, "saved_bytes": saved_bytes}
            return record(pass_function(pass_, call, out, leaves), info, bytes_moved=bytes_moved[pass_],
                          copy_bytes=nbytes([out]))

    return run
