"""Host time against GPU time per call, per op and provider, on a CUDA GPU.

The synchronized medians of the suites add the host's time to launch a call to the GPU's time
to run it. This splits them: ``host`` is the wall time per call of 300 back-to-back calls
(the GPU keeps up at small shapes, so it is the time to issue a call), ``gpu`` is
``triton.testing.do_bench``'s median. A cProfile of the fused op's host path follows.

    python -m bench.host_time [--out FILE]
"""

import argparse
import cProfile
import io
import pstats
import time

import torch
import torch.nn.functional as F

import effdrop_triton as ed

SHAPES = {"small": ((32, 64, 8, 8), False), "bn256": ((128, 256, 32, 32), True)}


def cases(x, w, b, rm, rv):
    p = 0.2
    groups = [x.chunk(4, 1)]
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


def per_call_us(fn, calls=300):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def main():
    from triton.testing import do_bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
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
        for op, providers in cases(x, w, b, rm, rv).items():
            for provider, fn in providers.items():
                grad = torch.randn_like(fn())
                for pass_, f in (("fwd", fn), ("fwdbwd", lambda: fn().backward(grad))):
                    host = per_call_us(f)
                    gpu = do_bench(f, warmup=5, rep=30) * 1e3
                    lines.append(f"{op:14s} {shape_name:6s} {pass_:7s} {provider:17s} {host:8.1f} {gpu:8.1f}")
                    print(lines[-1], flush=True)
    x = torch.randn(32, 64, 8, 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w, b = torch.ones(64, device="cuda", requires_grad=True), torch.zeros(64, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")
    grad = torch.randn_like(x)
    step = lambda: ed.norm_act_drop(x, w, b, rm, rv, p=0.2).backward(grad)  # noqa: E731
    per_call_us(step)
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
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
