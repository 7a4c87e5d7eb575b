import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def nonzero_randn(shape, dtype=torch.float32, layout="contiguous", device="cpu", generator_seed=0):
    """Random input with no zeros (so a zero in the output marks a dropped unit), in a given layout.

    ``layout``: "contiguous", "channels_last" (memory N, *spatial, C) or "strided"
    (a non-dense view: every other element of a larger tensor's last dim).
    """
    g = torch.Generator().manual_seed(generator_seed)
    if layout == "strided":
        base = torch.randn(*shape[:-1], 2 * shape[-1], generator=g)
        x = base[..., ::2]
    else:
        x = torch.randn(*shape, generator=g)
    x = torch.where(x.abs() < 1e-3, torch.full_like(x, 0.5), x).to(dtype)
    if layout == "channels_last":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.to(device)


def scale_of(p):
    """The fp32 scale of kept values."""
    return torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)


def assert_within_ulp(actual, expected, ulps=1):
    """Elementwise |actual - expected| <= ulps * ulp(expected) in the dtype of ``expected``."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    finfo = torch.finfo(expected.dtype)
    e = expected.double()
    magnitude = e.abs().clamp_min(finfo.tiny)
    ulp = finfo.eps * torch.exp2(torch.floor(torch.log2(magnitude)))
    a = actual.double()
    diff = torch.where(a == e, 0.0, (a - e).abs())  # equal infinities are 0 apart
    worst = (diff / ulp).max().item() if diff.numel() else 0.0
    assert worst <= ulps, f"{worst:.2f} ulp apart (allowed {ulps})"


@pytest.fixture(autouse=True)
def _restore_backend():
    import effdrop_triton

    previous = effdrop_triton.get_backend()
    yield
    effdrop_triton.set_backend(previous)
