"""The same parity on a CUDA GPU: Triton kernels vs the fallback on the GPU and on the CPU,
torch.compile without graph breaks, int64 offsets past 2**31 elements, no host sync, CUDA graph
replays (captured by hand and by ``torch.compile(mode="reduce-overhead")``) with fresh masks."""

import pytest
import torch

import effdrop_triton as ed
from effdrop_triton.testing import saved_for_backward
from conftest import INTERPRET, assert_within_ulp, nonzero_randn

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
    pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1 runs Triton on the CPU, not the GPU"),
]

OPS = {
    "neuron": lambda x, s: ed.drop_neuron(x, 0.3, seed=s),
    "channel": lambda x, s: ed.drop_channel(x, 0.3, seed=s),
    "path_groups": lambda x, s: ed.drop_path(x, 0.3, groups=4, seed=s),
    "path_list": lambda x, s: ed.drop_path(list(x.chunk(4, 1)), 0.3, seed=s),
    "path_batch": lambda x, s: ed.drop_path(x, 0.3, groups=4, mode="batch", seed=s),
    "layer": lambda x, s: ed.drop_layer(x, x.flip(0), 0.3, seed=s),
    "layer_batch": lambda x, s: ed.drop_layer(x, x.flip(0), 0.3, mode="batch", seed=s),
}


def forward_backward(op, x, backend):
    x = x.detach().clone().requires_grad_()
    with ed.use_backend(backend):
        out = op(x, 2024)
        out.backward(torch.ones_like(out))
    return out.detach(), x.grad


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 8, 7, 5), (16, 64, 32, 32)])
def test_triton_matches_fallback_on_gpu_and_cpu(op, layout, dtype, shape):
    x = nonzero_randn(shape, dtype, layout, device="cuda")
    out, grad = forward_backward(OPS[op], x, "triton")
    for device in ("cuda", "cpu"):
        ref_out, ref_grad = forward_backward(OPS[op], x.to(device), "torch")
        for a, b in ((out.cpu(), ref_out.cpu()), (grad.cpu(), ref_grad.cpu())):
            assert torch.equal(a == 0, b == 0), f"masks differ from the {device} fallback"
            assert_within_ulp(a, b)
    if layout == "channels_last" and op != "path_list":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_compile_fullgraph_on_cuda():
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), ed.DropChannel(0.2), ed.DropNeuron(0.2),
                              ed.DropPath(0.2, groups=4)).cuda()
    x = torch.randn(8, 3, 16, 16, device="cuda")
    torch.manual_seed(0)
    eager = net(x)
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(net, fullgraph=True)
        torch.manual_seed(0)
        out = compiled(x)
        out.sum().backward()
    torch.testing.assert_close(out, eager)


def test_offsets_past_int32():
    n = 2**31 + 8 * 1000 + 3
    if torch.cuda.get_device_properties(0).total_memory < 4 * n * 2 + (8 << 30):
        pytest.skip("not enough GPU memory for a 2**31-element test")
    x = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    with ed.use_backend("triton"):
        out = ed.drop_neuron(x, 0.5, seed=3)
    from effdrop_triton import masks

    tail = slice(n - 8 * 4096, n)
    keep = masks.neuron_keep(n, torch.tensor(3, device="cuda"), 0.5)[tail]
    assert torch.equal(out[tail] != 0, keep)


NORM_CASES = {
    "bn_channel": dict(p=0.3, seed=2024),
    "bn_neuron": dict(p=0.3, seed=2024, drop_type="neuron"),
    "bn_frozen": dict(p=0.3, seed=2024, use_batch_stats=False),
    "gn_channel": dict(p=0.3, seed=2024, norm="gn", num_groups=4),
}


def _norm_forward_backward(case, x, backend, grad_dtype=None):
    from effdrop_triton.functional import norm_act_drop

    kw = NORM_CASES[case]
    C = x.shape[1]
    g = torch.Generator().manual_seed(1)
    leaves = [t.to(x.device).requires_grad_() for t in (x.detach().clone(), torch.randn(C, generator=g), torch.randn(C, generator=g))]
    running = (torch.zeros(C, device=x.device), torch.ones(C, device=x.device)) if kw.get("norm", "bn") == "bn" else (None, None)
    with ed.use_backend(backend):
        out = norm_act_drop(*leaves, *running, **kw)
        grad = torch.linspace(-1, 1, out.numel(), device=x.device).view(out.shape)
        out.backward(grad.to(grad_dtype or out.dtype).to(out.dtype))  # the reference sees the same rounded gradient
    return [out.detach().float().cpu()] + [t.grad.float().cpu() for t in leaves] + [r.cpu() for r in running if r is not None]


@pytest.mark.parametrize("case", sorted(NORM_CASES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 8, 7, 5), (16, 64, 32, 32)])
def test_norm_act_drop_triton_matches_fallback(case, layout, dtype, shape):
    """Fused norm-ReLU-dropout on the GPU against the fallback on the CPU in fp32 (the reference):
    masks equal where the output is clearly nonzero, values within the dtype's tolerance."""
    x = nonzero_randn(shape, dtype, layout, device="cuda")
    out = _norm_forward_backward(case, x, "triton")
    ref = _norm_forward_backward(case, x.float().cpu(), "torch", grad_dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    clear = ref[0].abs() > 1e-2
    assert torch.equal((out[0] == 0)[clear], (ref[0] == 0)[clear]), "masks differ"
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **tol)


def test_norm_act_drop_conv2d_compiles_fullgraph_on_cuda():
    from effdrop_triton.functional import norm_act_drop_conv2d

    torch._dynamo.reset()
    x = torch.randn(8, 16, 12, 12, device="cuda", requires_grad=True)
    w, b = torch.ones(16, device="cuda", requires_grad=True), torch.zeros(16, device="cuda", requires_grad=True)
    cw = torch.randn(32, 16, 3, 3, device="cuda", requires_grad=True)
    fn = lambda t: norm_act_drop_conv2d(t, w, b, None, None, cw, padding=1, p=0.2, seed=3)  # noqa: E731
    eager = fn(x)
    compiled = torch.compile(fn, fullgraph=True)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_block_saves_at_most_half_of_eager_on_gpu(layout):
    """The memory claim on the GPU too: ConvBlock(block_type=0) keeps the block input and per-channel
    statistics; eager BatchNorm2d + ReLU + Dropout2d + Conv2d keeps three activations."""
    from torch import nn

    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    block = ed.ConvBlock(64, 64, 3, block_type=0, drop_rate=0.2, padding=1).cuda().to(memory_format=memory_format)
    eager = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(), nn.Dropout2d(0.2),
                          nn.Conv2d(64, 64, 3, padding=1, bias=False)).cuda().to(memory_format=memory_format)
    x = torch.randn(16, 64, 32, 32, device="cuda").to(memory_format=memory_format).requires_grad_()
    ours, theirs = saved_for_backward(block, x)[1], saved_for_backward(eager, x)[1]
    assert ours <= 0.5 * theirs, (ours, theirs)
    assert saved_for_backward(lambda t: ed.norm_act_drop(t, block.norm.weight, block.norm.bias, p=0.2), x)[1] \
        <= x.numel() * x.element_size() + 4096


def _cuda_calls():
    """name -> (forward, leaves): every op and fused module with a fresh seed per call (``seed=None``)."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 16, 16, device="cuda", requires_grad=True)
    shortcut = torch.randn_like(x, requires_grad=True)
    branches = [torch.randn(8, 16, 16, 16, device="cuda", requires_grad=True) for _ in range(4)]
    bn = ed.BatchNormActDrop2d(64, drop_rate=0.2).cuda()
    cumulative = ed.BatchNormActDrop2d(64, momentum=None, drop_type="neuron", drop_rate=0.2).cuda()
    gn = ed.GroupNormActDrop(8, 64, drop_rate=0.2).cuda()
    block = ed.ConvBlock(64, 64, 3, padding=1, block_type=0, drop_rate=0.2).cuda()
    return {
        "drop_neuron": (lambda: ed.drop_neuron(x, 0.2), [x]),
        "drop_channel": (lambda: ed.drop_channel(x, 0.2), [x]),
        "drop_path_groups": (lambda: ed.drop_path(x, 0.2, groups=4), [x]),
        "drop_path_list": (lambda: ed.drop_path(branches, 0.2), branches),
        "drop_layer": (lambda: ed.drop_layer(x, shortcut, 0.2), [x, shortcut]),
        "bn": (lambda: bn(x), [x, bn.weight, bn.bias]),
        "bn_cumulative": (lambda: cumulative(x), [x, cumulative.weight, cumulative.bias]),
        "bn_eval": (lambda: ed.norm_act_drop(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, training=False),
                    [x, bn.weight, bn.bias]),
        "gn": (lambda: gn(x), [x, gn.weight, gn.bias]),
        "conv_block": (lambda: block(x), [x, block.conv.weight, block.norm.weight]),
    }


CUDA_CASES = ["bn", "bn_cumulative", "bn_eval", "conv_block", "drop_channel", "drop_layer", "drop_neuron",
              "drop_path_groups", "drop_path_list", "gn"]


@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_path_never_syncs(case):
    """No ``.item()``, ``.nonzero()``, ``bool(tensor)`` or device-to-host copy in a call or its backward:
    CUDA's own sync checker raises on any synchronizing call."""
    forward, leaves = _cuda_calls()[case]
    with ed.use_backend("triton"):
        out = forward()  # compile the kernels outside the check
        grad = torch.ones_like(out)
        torch.autograd.grad(out, leaves, grad)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            torch.autograd.grad(forward(), leaves, grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_graph_replays_draw_fresh_masks(case):
    """A call and its backward captured in a CUDA graph: each replay draws a new seed on the device (new
    masks), ``torch.manual_seed`` reproduces the replays, and the running statistics update on the device."""
    forward, leaves = _cuda_calls()[case]
    static = {}
    with ed.use_backend("triton"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                out = forward()
                torch.autograd.grad(out, leaves, torch.ones_like(out))
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static["out"] = forward()
            static["grads"] = torch.autograd.grad(static["out"], leaves, torch.ones_like(static["out"]))

    def replay():
        graph.replay()
        torch.cuda.synchronize()
        return static["out"].clone(), [g.clone() for g in static["grads"]]

    torch.manual_seed(5)
    first, first_grads = replay()
    second, _ = replay()
    torch.manual_seed(5)
    again, again_grads = replay()
    assert torch.equal(first, again) and all(torch.equal(a, b) for a, b in zip(first_grads, again_grads))
    if case != "bn_eval":  # eval normalizes without dropout: nothing random
        assert not torch.equal(first == 0, second == 0), "a replay reused the captured masks"


# --- a compiled training step replayed as CUDA graphs (torch.compile mode="reduce-overhead") ---------

def _graph_step(model, optimizer_step, x, target, dtype=torch.bfloat16):
    """One training step as ``effdrop-train --compile-mode reduce-overhead --amp bf16`` runs it; returns the
    logits and the gradients (copies: the next replay overwrites the graphs' outputs)."""
    import torch.nn.functional as F

    torch.compiler.cudagraph_mark_step_begin()
    for p in model.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(x)
        loss = F.cross_entropy(logits, target)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    logits = logits.clone()
    optimizer_step()
    return logits, grads


def _small_zoo_model():
    from effdrop_triton.models import build_model

    torch.manual_seed(0)
    model = build_model("wrn", depth=10, widen_factor=2, num_classes=10, block_type=0, drop_type="channel",
                        drop_rate=0.3).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    return model, x, torch.randint(0, 10, (32,), device="cuda")


def test_reduce_overhead_step_replays_without_cudagraph_skips_or_syncs():
    """Model and optimizer step compiled with ``mode="reduce-overhead"`` on the Triton path: inductor skips no
    graph (a skip counts every op cudagraph trees refuse), a replayed step synchronizes nothing, and with the
    weights held still two replays draw different masks while ``torch.manual_seed`` reproduces one."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, x, target = _small_zoo_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.01, dtype=torch.float64, device="cuda"),
                                momentum=0.9)
    compiled = torch.compile(model, mode="reduce-overhead")
    optimizer_step = torch.compile(optimizer.step, mode="reduce-overhead")
    with ed.use_backend("triton"):
        for _ in range(3):  # warm-up, record, replay
            _graph_step(compiled, optimizer_step, x, target)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _graph_step(compiled, optimizer_step, x, target)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
        hold_still = lambda: None  # noqa: E731  (no optimizer step: only the masks change)
        torch.manual_seed(7)
        first, _ = _graph_step(compiled, hold_still, x, target)
        second, _ = _graph_step(compiled, hold_still, x, target)
        torch.manual_seed(7)
        again, _ = _graph_step(compiled, hold_still, x, target)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert not torch.equal(first, second), "a replay reused the recorded masks"
    assert torch.equal(first, again), "torch.manual_seed did not reproduce the replay"


def test_reduce_overhead_gradients_equal_an_eager_step_with_the_same_seeds():
    """A replayed step's logits and gradients against the eager step's from the same weights and seeds
    (``fallback_random``: inductor draws the seeds with the eager generator), in fp32, within a tolerance
    for the TF32 convolutions and inductor's reordered sums."""
    import copy

    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    model, x, target = _small_zoo_model()
    eager = copy.deepcopy(model)
    with ed.use_backend("triton"), inductor_config.patch(fallback_random=True):
        compiled = torch.compile(model, mode="reduce-overhead")
        for _ in range(3):  # warm-up, record, replay; no optimizer step: the weights stay put
            _graph_step(compiled, lambda: None, x, target, torch.float32)
        torch.manual_seed(11)
        logits, grads = _graph_step(compiled, lambda: None, x, target, torch.float32)
        torch.manual_seed(11)
        logits_ref, grads_ref = _graph_step(eager, lambda: None, x, target, torch.float32)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-3, atol=1e-3)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-3)
