"""``python -m effdrop_triton``: apply the four levels to a batch and show what each one drops."""

import torch

import effdrop_triton as ed
from effdrop_triton.backend import triton_supports


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(32, 64, 16, 16, device=device)
    backend = "triton" if triton_supports(x) else "torch (PyTorch fallback)"
    print(f"effdrop-triton {ed.__version__}: torch {torch.__version__}, device {device}, backend {backend}")
    p = 0.25
    levels = {
        "drop-neuron (elements)": (ed.drop_neuron(x, p), x.numel(), lambda y: (y == 0).sum()),
        "drop-channel (sample, channel)": (ed.drop_channel(x, p), 32 * 64, lambda y: (y.flatten(2) == 0).all(-1).sum()),
        "drop-path (sample, 4 paths)": (ed.drop_path(x, p, groups=4), 32 * 4,
                                        lambda y: (y.reshape(32, 4, -1) == 0).all(-1).sum()),
        "drop-layer (sample branch)": (ed.drop_layer(x, torch.zeros_like(x), p), 32,
                                       lambda y: (y.flatten(1) == 0).all(-1).sum()),
    }
    for name, (out, units, count_dropped) in levels.items():
        dropped = int(count_dropped(out))
        print(f"  {name:32s} p={p}: dropped {dropped:6d} of {units:7d} units ({dropped / units:.3f})")
    same = torch.equal(ed.drop_channel(x, p, seed=7), ed.drop_channel(x, p, seed=7))
    print(f"  same seed, same mask: {same}; mean of drop_neuron output / mean of input: "
          f"{(ed.drop_neuron(x.abs(), p).mean() / x.abs().mean()).item():.4f}")


if __name__ == "__main__":
    main()
