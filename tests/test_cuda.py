"""The same parity on a CUDA GPU: Triton kernels vs the fallback on the GPU and on the CPU,
torch.compile without graph breaks, int64 offsets past 2**31 elements."""

import pytest
import torch

import effdrop_triton as ed
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
    from effdrop_triton import philox

    tail = slice(n - 8 * 4096, n)
    keep = philox.neuron_keep(n, torch.tensor(3, device="cuda"), 0.5)[tail]
    assert torch.equal(out[tail] != 0, keep)
