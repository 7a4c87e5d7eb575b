"""Host time per call, per op and provider: what the host spends to issue a call, apart from the GPU.

    python -m bench.host_time --stub-launches [--out FILE]   # any machine: the package's own host work
    python -m bench.host_time [--out FILE]                   # a CUDA GPU: host time against GPU time

``--stub-launches`` runs the Triton path under ``TRITON_INTERPRET=1`` with every Triton launch
replaced by a counter, on a tiny 8x16x4x4 fp32 tensor, so no kernel runs and what is left is the
host work around the launches: per case and pass it prints the Triton launches, the other
top-level ATen ops (``torch.profiler``; views free) and the host µs per call, next to the
PyTorch baseline doing the same job on the same tensor (whose ATen ops do run: on a GPU they
would be launches too), and next to a minimal ``torch.autograd.Function`` around the same
launchers (seed draw, output, launch; the same in backward), as Liger-Kernel writes its ops.

On a GPU, ``host`` is the wall time per call of 300 back-to-back calls (the GPU keeps up at small
shapes, so it is the time to issue a call), ``gpu`` is ``triton.testing.do_bench``'s median.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from effdrop_triton.levels import DropLevel

# ATen ops that only make a view of existing memory: free in the op counts
VIEW_OPS = frozenset(
    f"aten::{name}" for name in (
        "view", "reshape", "_reshape_alias", "_unsafe_view", "as_strided", "expand", "expand_as", "select", "slice",
        "narrow", "unsqueeze", "squeeze", "permute", "movedim", "transpose", "t", "detach", "alias", "lift_fresh",
        "unflatten", "flatten", "split", "split_with_sizes", "chunk", "unbind", "view_as", "contiguous",
        "resolve_conj", "resolve_neg"))


@contextlib.contextmanager
def stubbed_launches():
    """Replace every Triton launch by a record of its kernel's name (yields the list)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: List[str] = []

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            launches.append(self.__name__ if hasattr(self, "__name__") else self.fn.__name__)

    originals = InterpretedFunction.run, JITFunction.run
    InterpretedFunction.run = JITFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run, JITFunction.run = originals


def host_work(fn: Callable[[], object]) -> Tuple[List[str], List[str]]:
    """``(launches, ops)`` of one call of ``fn`` with launches stubbed: the Triton kernels launched
    and the top-level ATen ops dispatched besides them (those with no ATen op above them; views,
    which copy nothing, left out)."""
    with stubbed_launches() as launches, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = []
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in VIEW_OPS:
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            ops.append(event.name)
    return list(launches), ops


def per_call_us(fn: Callable[[], object], calls: int = 200, repeats: int = 7) -> float:
    """Fastest of ``repeats`` rounds of ``calls`` calls, in µs per call (launches as the caller set them)."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


# --- the cases: this package's call, the PyTorch baseline and (for the standalone ops) a minimal Function ---

def _minimal_functions():
    """Minimal ``autograd.Function`` around the package's launchers: the reference for the eager path's cost."""
    from effdrop_triton._layout import ncs
    from effdrop_triton.kernels.drop_layer import drop_layer_triton
    from effdrop_triton.kernels.drop_neuron import drop_neuron_triton
    from effdrop_triton.kernels.unit_gate import unit_gate_triton

    def seed_for(x):
        return torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64, device=x.device)

    def masking(gate):
        """The minimal Function of a mask-multiplying op: its backward is the same gate on the gradient."""
        class Minimal(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, p):
                seed = seed_for(x)
                ctx.save_for_backward(seed)
                ctx.p = p
                return gate(x, seed, p)

            @staticmethod
            def backward(ctx, grad):
                (seed,) = ctx.saved_tensors
                return gate(grad, seed, ctx.p), None

        return Minimal

    def gate_channels(x, seed, p):
        out = torch.empty_like(x)
        unit_gate_triton(ncs(x), ncs(out), seed, p, level=DropLevel.CHANNEL, per_sample=True,
                         units_per_sample=x.shape[1])
        return out

    def gate_samples(x, seed, p):
        out = torch.empty_like(x)
        rows = ((x.shape[0], 1, x.numel() // x.shape[0]), (x.stride(0), x.stride(0), 1))
        unit_gate_triton((x, *rows), (out, *rows), seed, p, level=DropLevel.LAYER, per_sample=True,
                         units_per_sample=1)
        return out

    class DropLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, branch, shortcut, p):
            seed = seed_for(branch)
            out = torch.empty_like(shortcut)
            drop_layer_triton(branch, shortcut, out, seed, p, True)
            ctx.save_for_backward(seed)
            ctx.p = p
            return out

        @staticmethod
        def backward(ctx, grad):
            (seed,) = ctx.saved_tensors
            return gate_samples(grad, seed, ctx.p), grad, None

    return masking(drop_neuron_triton), masking(gate_channels), DropLayer


def stub_cases(shape=(8, 16, 4, 4), p: float = 0.1) -> Dict[str, dict]:
    """case -> {provider: (forward callable, tensors to differentiate or None: forward only)}; the first
    provider is this package's call, the second the PyTorch baseline."""
    import torchvision

    import effdrop_triton as ed
    from torch import nn

    torch.manual_seed(0)
    N, C = shape[0], shape[1]
    x = torch.randn(shape, requires_grad=True)
    shortcut = torch.randn(shape, requires_grad=True)
    branches = [torch.randn(N, C // 4, *shape[2:], requires_grad=True) for _ in range(4)]
    minimal_neuron, minimal_channel, minimal_layer = _minimal_functions()

    def gated(b):
        return b * torch.empty(N, 1, 1, 1).bernoulli_(1 - p).div_(1 - p)

    bn = ed.BatchNormActDrop2d(C, drop_rate=p)
    bn_ref = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(), nn.Dropout2d(p))
    gn = ed.GroupNormActDrop(4, C, drop_rate=p)
    gn_ref = nn.Sequential(nn.GroupNorm(4, C), nn.ReLU(), nn.Dropout2d(p))
    block = ed.ConvBlock(C, C, 3, padding=1, block_type=0, drop_rate=p)
    block_ref = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(), nn.Dropout2d(p), nn.Conv2d(C, C, 3, padding=1, bias=False))
    bn_eval, bn_ref_eval = ed.BatchNormActDrop2d(C, drop_rate=p).eval(), nn.Sequential(
        nn.BatchNorm2d(C), nn.ReLU(), nn.Dropout2d(p)).eval()
    ref_params = lambda module: [x, *(p for p in module.parameters())]  # noqa: E731
    return {
        "drop_neuron": {"effdrop": (lambda: ed.drop_neuron(x, p), [x]),
                        "F.dropout": (lambda: F.dropout(x, p), [x]),
                        "minimal Function": (lambda: minimal_neuron.apply(x, p), [x])},
        "drop_channel": {"effdrop": (lambda: ed.drop_channel(x, p), [x]),
                         "F.dropout2d": (lambda: F.dropout2d(x, p), [x]),
                         "minimal Function": (lambda: minimal_channel.apply(x, p), [x])},
        "drop_path groups=4": {"effdrop": (lambda: ed.drop_path(x, p, groups=4), [x]),
                               "mul + cat": (lambda: torch.cat([gated(g) for g in x.chunk(4, 1)], 1), [x])},
        "drop_path 4 branches": {"effdrop": (lambda: ed.drop_path(branches, p), branches),
                                 "mul + cat": (lambda: torch.cat([gated(b) for b in branches], 1), branches)},
        "drop_layer": {"effdrop": (lambda: ed.drop_layer(x, shortcut, p), [x, shortcut]),
                       "stochastic_depth + add": (lambda: shortcut + torchvision.ops.stochastic_depth(x, p, "row"),
                                                  [x, shortcut]),
                       "minimal Function": (lambda: minimal_layer.apply(x, shortcut, p), [x, shortcut])},
        "BatchNormActDrop2d": {"effdrop": (lambda: bn(x), ref_params(bn)),
                               "BN + ReLU + Dropout2d": (lambda: bn_ref(x), ref_params(bn_ref))},
        "BatchNormActDrop2d eval": {"effdrop": (lambda: bn_eval(x), None),
                                    "BN + ReLU + Dropout2d": (lambda: bn_ref_eval(x), None)},
        "GroupNormActDrop": {"effdrop": (lambda: gn(x), ref_params(gn)),
                             "GN + ReLU + Dropout2d": (lambda: gn_ref(x), ref_params(gn_ref))},
        "ConvBlock(block_type=0)": {"effdrop": (lambda: block(x), ref_params(block)),
                                    "BN + ReLU + Dropout2d + Conv2d": (lambda: block_ref(x), ref_params(block_ref))},
    }


ROUNDS = 20  # alternating rounds per case; each provider's time is its fastest


def forward_backward(forward: Callable[[], torch.Tensor], inputs, grad: torch.Tensor) -> Callable[[], object]:
    """Forward then ``torch.autograd.grad`` into ``inputs`` (autograd's accumulation into ``.grad`` left out)."""
    return lambda: torch.autograd.grad(forward(), inputs, grad)


def _verdict(case: str, pass_: str, times: dict) -> str:
    """One line: this package's host time against the baseline (target 1.3x) and the minimal Function (1.1x)."""
    ours, names = times["effdrop"], [name for name in times if name != "effdrop"]
    parts = [f"{case} {pass_}: {ours / times[names[0]]:.2f}x {names[0]} "
             f"({'met' if ours <= 1.3 * times[names[0]] else 'missed'})"]
    if "minimal Function" in times:
        minimal = ours / times["minimal Function"]
        parts.append(f"{minimal:.2f}x the minimal Function ({'met' if minimal <= 1.1 else 'missed'})")
    return ", ".join(parts)


def _stub_report() -> str:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (they are imported lazily)
    import triton

    import effdrop_triton as ed

    torch.set_num_threads(1)
    lines = [f"host work per call with Triton launches stubbed (TRITON_INTERPRET=1, 8x16x4x4 fp32, p=0.1), "
             f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}, "
             f"triton {triton.__version__}, python {platform.python_version()}",
             "launches + other ATen ops per call (views free); host us per call (fastest of 20 alternating rounds "
             "of 200 calls); "
             "ratio = this package's time / that provider's",
             f"{'case':26s} {'pass':7s} {'provider':32s} {'launches+ops':>12s} {'host us':>8s} {'ratio':>6s}"]
    summary = []
    with ed.use_backend("triton"):
        for case, providers in stub_cases().items():
            passes = ("fwd", "fwdbwd") if next(iter(providers.values()))[1] is not None else ("fwd",)
            for pass_ in passes:
                calls = {provider: forward if pass_ == "fwd" else
                         forward_backward(forward, inputs, torch.ones_like(forward()))
                         for provider, (forward, inputs) in providers.items()}
                times = dict.fromkeys(calls, float("inf"))
                with stubbed_launches():
                    for _ in range(ROUNDS):  # providers alternate: a slow spell of the machine hits them alike
                        for provider, fn in calls.items():
                            times[provider] = min(times[provider], per_call_us(fn, repeats=1))
                for provider, fn in calls.items():
                    us = times[provider]
                    launches, ops = host_work(fn)
                    counts = f"{len(launches)} + {len(ops)}"
                    ratio = "" if provider == "effdrop" else f"{times['effdrop'] / us:5.2f}x"
                    lines.append(f"{case:26s} {pass_:7s} {provider:32s} {counts:>12s} {us:8.1f} {ratio:>6s}")
                    print(lines[-1], flush=True)
                if pass_ == "fwdbwd" or len(passes) == 1:
                    summary.append(_verdict(case, pass_, times))
    lines += ["", "targets: the last pass of each case at most 1.3x the PyTorch baseline; the standalone ops at "
              "most 1.1x the minimal Function", *summary]
    print("\n".join(lines[-len(summary) - 2:]))
    return "\n".join(lines)


# --- on a CUDA GPU: host time against GPU time ---

SHAPES = {"small": ((32, 64, 8, 8), False), "bn256": ((128, 256, 32, 32), True)}


def gpu_cases(x, w, b, rm, rv):
    p = 0.2
    groups = [x.chunk(4, 1)]
    import effdrop_triton as ed

    return {
        "drop_neuron": {"effdrop": lambda: ed.drop_neuron(x, p), "F.dropout": lambda: F.dropout(x, p)},
        "drop_channel": {"effdrop": lambda: ed.drop_channel(x, p), "F.dropout2d": lambda: F.dropout2d(x, p)},
        "drop_layer": {"effdrop": lambda: ed.drop_layer(x, x, p),
                       "stochastic_depth": lambda: x + __import__("torchvision").ops.stochastic_depth(x, p, "row")},
        "drop_path": {"effdrop": lambda: ed.drop_path(x, p, groups=4),
                      "mul+cat": lambda: torch.cat([g * torch.bernoulli(torch.full((g.shape[0], 1, 1, 1), 0.8, device=g.device)) / 0.8
                                                    for g in groups[0]], 1)},
        "norm_act_drop": {"effdrop": lambda: ed.norm_act_drop(x, w, b, rm, rv, p=p),
                          "eager": lambda: F.dropout2d(F.relu(F.batch_norm(x, rm, rv, w, b, True)), p)},
    }


def gpu_call_us(fn, calls=300):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def _gpu_report() -> str:
    import cProfile
    import io
    import pstats

    from triton.testing import do_bench

    import effdrop_triton as ed

    lines = [f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {__import__('triton').__version__}",
             f"{'op':14s} {'shape':6s} {'pass':7s} {'provider':17s} {'host us':>8s} {'gpu us':>8s}"]
    for shape_name, (shape, channels_last) in SHAPES.items():
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        C = shape[1]
        w = torch.ones(C, device="cuda", requires_grad=True)
        b = torch.zeros(C, device="cuda", requires_grad=True)
        rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
        for op, providers in gpu_cases(x, w, b, rm, rv).items():
            for provider, fn in providers.items():
                grad = torch.randn_like(fn())
                for pass_, f in (("fwd", fn), ("fwdbwd", lambda: fn().backward(grad))):
                    host = gpu_call_us(f)
                    gpu = do_bench(f, warmup=5, rep=30) * 1e3
                    lines.append(f"{op:14s} {shape_name:6s} {pass_:7s} {provider:17s} {host:8.1f} {gpu:8.1f}")
                    print(lines[-1], flush=True)
    x = torch.randn(32, 64, 8, 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w, b = torch.ones(64, device="cuda", requires_grad=True), torch.zeros(64, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")
    grad = torch.randn_like(x)
    step = lambda: ed.norm_act_drop(x, w, b, rm, rv, p=0.2).backward(grad)  # noqa: E731
    gpu_call_us(step)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        step()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    lines.append("cProfile, 200 x norm_act_drop fwd+bwd at small bf16, by own time:\n" + text.getvalue())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        xl = torch.randn(128, 256, 32, 32, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        xl.requires_grad_()
        wl, bl = torch.ones(256, device="cuda", requires_grad=True), torch.zeros(256, device="cuda", requires_grad=True)
        for _ in range(5):
            ed.norm_act_drop(xl, wl, bl, torch.zeros(256, device="cuda"), torch.ones(256, device="cuda"), p=0.2).backward(xl.detach())
        torch.cuda.synchronize()
    lines.append("CUDA kernels of 5 x norm_act_drop fwd+bwd at bn256 bf16:\n"
                 + prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    report = "\n".join(lines)
    print(report[report.index("cProfile"):])
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stub-launches", action="store_true",
                        help="the host work alone: Triton launches stubbed under TRITON_INTERPRET=1 (no GPU needed)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    report = _stub_report() if args.stub_launches else _gpu_report()
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
