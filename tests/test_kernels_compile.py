"""Every kernel launch the launchers make compiles ahead of time for an H100 (sm_90), on this CPU,
and moves memory in 128-bit vectors (the bandwidth design of the kernels).

The launches are captured from the real launchers (public API, Triton backend) and compiled
with the specialization the JIT would apply (16-byte aligned pointers, ints divisible by 16).
"""

import re

import pytest
import torch

import effdrop_triton as ed
from conftest import INTERPRET
from effdrop_triton.levels import DropLevel

triton = pytest.importorskip("triton")
if INTERPRET:
    pytest.skip("kernels are interpreted under TRITON_INTERPRET=1; this compiles them for a GPU", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from effdrop_triton.kernels import drop_layer, drop_neuron, norm_act_drop, norm_stats, unit_gate  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64"}
KERNELS = [(drop_neuron, "_drop_neuron_flat_kernel"), (drop_neuron, "_drop_neuron_channels_last_kernel"),
           (unit_gate, "_unit_gate_kernel"), (drop_layer, "_drop_layer_kernel"),
           (norm_stats, "_partial_moments_kernel"), (norm_stats, "_finish_moments_kernel"),
           (norm_act_drop, "_norm_act_drop_fwd_kernel"),
           (norm_act_drop, "_norm_act_drop_bwd_sums_kernel"), (norm_act_drop, "_norm_act_drop_bwd_dx_kernel")]


class Capture:
    """Stands in for ``kernel[grid]``: records the launch instead of running it."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def compile_launch(fn, args, kwargs):
    names = fn.arg_names
    bound = dict(zip(names, args), **kwargs)
    options = {key: bound.pop(key) for key in ("num_warps", "num_stages") if key in bound}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value = bound[name]
        if index in fn.constexprs:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, float):
            signature[name], aligned = "fp32", False
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        if signature[name] != "constexpr" and aligned and signature[name] != "fp32":
            attrs[(index,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                          target=H100, options=options)


@pytest.fixture
def launches(monkeypatch):
    recorded = []
    for module, name in KERNELS:
        if hasattr(module, name):  # an absent kernel is never launched; the tests check which ones ran
            monkeypatch.setattr(module, name, Capture(getattr(module, name), recorded))
    monkeypatch.setattr(ed.backend, "_why_not_triton", lambda device, dtype: None)
    return recorded


def _run(op, x):
    with ed.use_backend("triton"):
        x = x.detach().requires_grad_()
        out = OPS[op](x)
        out.backward(torch.ones_like(out))


OPS = {
    "neuron": lambda x: ed.drop_neuron(x, 0.2, seed=1),
    "channel": lambda x: ed.drop_channel(x, 0.2, seed=1),
    "path_list": lambda x: ed.drop_path(list(x.chunk(4, 1)), 0.2, seed=1),
    "path_groups": lambda x: ed.drop_path(x, 0.2, groups=4, seed=1, mode="batch"),
    "layer": lambda x: ed.drop_layer(x, x.detach() * 2, 0.2, seed=1),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launches_compile_for_h100_with_128bit_memory_access(launches, op, channels_last, dtype):
    x = torch.randn(8, 64, 16, 16, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    _run(op, x)
    assert launches, "the Triton launcher made no launch"
    for fn, args, kwargs in launches:
        ptx = compile_launch(fn, args, kwargs).asm["ptx"]
        loads = set(re.findall(r"ld\.global[.\w]*", ptx)) - {"ld.global.b64"}  # the seed is one 64-bit load
        stores = set(re.findall(r"st\.global[.\w]*", ptx))
        assert loads and all(".v4." in op for op in loads), (fn.__name__, loads)
        assert stores and all(".v4." in op for op in stores), (fn.__name__, stores)


@pytest.mark.parametrize("shape", [(3, 20, 7, 9), (2, 52, 3, 1)])
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_awkward_launches_compile(launches, op, shape, channels_last):
    x = torch.randn(shape, dtype=torch.float16)
    _run(op, x.to(memory_format=torch.channels_last) if channels_last else x)
    for fn, args, kwargs in launches:
        assert compile_launch(fn, args, kwargs).asm["cubin"]


def _elements_per_program(bound):
    """Elements of one program's tile: every BLOCK_* extent (a BLOCK_G group holds 8 elements)."""
    elements = 1
    for key, value in bound.items():
        if key.startswith("BLOCK_"):
            elements *= value * (8 if key == "BLOCK_G" else 1)
    return elements


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spatial", [16, 7])
def test_drop_neuron_runs_each_philox_call_once(launches, channels_last, dtype, spatial):
    """8 elements share a Philox call; the layout must not make several threads repeat it
    (a channels_last group of 8 positions straddles two calls when H * W is not a multiple of 8)."""
    x = torch.randn(8, 64, spatial, spatial, dtype=dtype)
    _run("neuron", x.to(memory_format=torch.channels_last) if channels_last else x)
    for fn, args, kwargs in launches:
        bound = dict(zip(fn.arg_names, args), **kwargs)
        calls = bound["CALLS"] if "CALLS" in bound else _elements_per_program(bound) // 8
        calls *= 1 if bound.get("ALIGNED", True) else 2
        calls_per_thread = max(1, calls // (32 * bound["num_warps"]))
        high_products = compile_launch(fn, args, kwargs).asm["ptx"].count("mul.hi")
        assert high_products <= 2 * 10 * calls_per_thread, (fn.__name__, high_products, calls_per_thread)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["channel", "path_groups", "path_list"])
def test_unit_gates_are_drawn_once_per_many_elements(launches, channels_last, op):
    """A (sample, channel) gate serves a whole map: a thread draws at most one gate per 8 elements."""
    x = torch.randn(8, 64, 32, 32, dtype=torch.bfloat16)
    _run(op, x.to(memory_format=torch.channels_last) if channels_last else x)
    for fn, args, kwargs in launches:
        bound = dict(zip(fn.arg_names, args), **kwargs)
        elements_per_thread = bound["BLOCK_N"] * bound["BLOCK_C"] * bound["BLOCK_S"] // (32 * bound["num_warps"])
        high_products = compile_launch(fn, args, kwargs).asm["ptx"].count("mul.hi")
        assert high_products <= 2 * 10 * max(1, elements_per_thread // 8), (high_products, elements_per_thread)


NORM_OPS = {
    "bn_channel": dict(p=0.2, seed=1),
    "bn_neuron": dict(p=0.2, seed=1, drop_type="neuron"),
    "bn_eval": dict(training=False),
    "gn_channel": dict(p=0.2, seed=1, norm="gn", num_groups=8),
    "gn_neuron": dict(p=0.2, seed=1, norm="gn", num_groups=8, drop_type="neuron"),
}
# the LEVEL constexpr of each case's kernels: the level's number, None without dropout (eval)
NORM_LEVELS = {"bn_channel": int(DropLevel.CHANNEL), "bn_neuron": int(DropLevel.NEURON), "bn_eval": None,
               "gn_channel": int(DropLevel.CHANNEL), "gn_neuron": int(DropLevel.NEURON)}


def _run_norm(case, x):
    from effdrop_triton.functional import norm_act_drop

    kw = dict(NORM_OPS[case])
    C = x.shape[1]
    running = (torch.zeros(C), torch.ones(C)) if kw.get("norm", "bn") == "bn" else (None, None)
    weight, bias = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    with ed.use_backend("triton"):
        x = x.detach().requires_grad_()
        out = norm_act_drop(x, weight, bias, *running, input_stats=True, **kw)[0]
        out.backward(torch.ones_like(out))


def _vector_ops(ptx):
    loads = set(re.findall(r"ld\.global[.\w]*", ptx)) - {"ld.global.b64"}  # the seed is one 64-bit load
    stores = set(re.findall(r"st\.global[.\w]*", ptx))
    return loads, stores


@pytest.mark.parametrize("case", sorted(NORM_OPS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_act_drop_launches_compile_with_128bit_element_access(launches, case, channels_last, dtype):
    """Every per-element load and store of the fused norm kernels is a 128-bit vector. Per-channel constants
    (statistics, weight, bias) are the only narrower loads, and only in NCHW (one constant serves a whole row
    there) or for GroupNorm's per-(sample, group) statistics (gathered once per program's channels)."""
    x = torch.randn(8, 64, 16, 16, dtype=dtype)
    _run_norm(case, x.to(memory_format=torch.channels_last) if channels_last else x)
    names = {fn.__name__ for fn, _, _ in launches}
    expected = {"_norm_act_drop_fwd_kernel", "_norm_act_drop_bwd_sums_kernel", "_norm_act_drop_bwd_dx_kernel"}
    if case != "bn_eval":  # eval normalizes with the running statistics: no statistics pass
        expected |= {"_partial_moments_kernel", "_finish_moments_kernel"}
    assert names == expected, names
    for fn, args, kwargs in launches:
        bound = dict(zip(fn.arg_names, args), **kwargs)
        assert bound.get("LEVEL", NORM_LEVELS[case]) == NORM_LEVELS[case], (fn.__name__, bound["LEVEL"])
        if fn.__name__ == "_finish_moments_kernel":  # merges the (N, C, K) partials: no element access
            continue
        ptx = compile_launch(fn, args, kwargs).asm["ptx"]
        loads, stores = _vector_ops(ptx)
        element_loads = {op for op in loads if ".v4." in op}
        assert element_loads, (fn.__name__, loads)
        if channels_last and not case.startswith("gn"):  # channels are the vector axis: the constants are vectors too
            assert all(".v4." in op for op in loads), (fn.__name__, loads)
        if fn.__name__ in ("_norm_act_drop_fwd_kernel", "_norm_act_drop_bwd_dx_kernel"):
            assert stores and all(".v4." in op for op in stores), (fn.__name__, stores)


@pytest.mark.parametrize("shape", [(3, 20, 7, 9), (2, 52, 3, 1), (1, 8, 1, 97)])
@pytest.mark.parametrize("case", sorted(NORM_OPS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_norm_act_drop_awkward_launches_compile(launches, case, shape, channels_last):
    x = torch.randn(shape, dtype=torch.float16)
    if case.startswith("gn"):
        x = torch.randn(shape[0], 8 * (shape[1] // 8 or 1), *shape[2:], dtype=torch.float16)
    _run_norm(case, x.to(memory_format=torch.channels_last) if channels_last else x)
    for fn, args, kwargs in launches:
        assert compile_launch(fn, args, kwargs).asm["cubin"]


@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 64, 16, 16), (8, 64, 7, 7), (64, 96)])
def test_norm_act_drop_neuron_runs_each_philox_call_once(launches, norm, channels_last, dtype, shape):
    """The fused drop-neuron passes (apply, weight/bias sums, input gradient) draw as the standalone op does:
    one Philox call per 8 logical elements, made by one thread (two when a group of 8 straddles two calls:
    H * W, or C for 2-d input, not a multiple of 8). The sums pass's BLOCK_* tile is one trip of its loop."""
    x = torch.randn(shape, dtype=dtype)
    _run_norm("gn_neuron" if norm == "gn" else "bn_neuron", x.to(memory_format=torch.channels_last)
              if channels_last and x.dim() == 4 else x)
    checked = set()
    for fn, args, kwargs in launches:
        bound = dict(zip(fn.arg_names, args), **kwargs)
        if "seed_ptr" not in bound:  # the statistics pass draws nothing
            continue
        assert bound["LEVEL"] == int(DropLevel.NEURON), (fn.__name__, bound["LEVEL"])
        calls = _elements_per_program(bound) // 8 * (1 if bound.get("ALIGNED", True) else 2)
        calls_per_thread = max(1, calls // (32 * bound["num_warps"]))
        high_products = compile_launch(fn, args, kwargs).asm["ptx"].count("mul.hi")
        assert high_products <= 2 * 10 * calls_per_thread, (fn.__name__, high_products, calls_per_thread)
        checked.add(fn.__name__)
    assert checked == {"_norm_act_drop_fwd_kernel", "_norm_act_drop_bwd_sums_kernel", "_norm_act_drop_bwd_dx_kernel"}, \
        checked
