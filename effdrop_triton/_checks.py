"""Argument checks shared by the functional ops: clear errors, nothing coerced silently."""

from __future__ import annotations

import math
import numbers
from typing import Union

import torch

SEED_LIMIT = 1 << 63
Seed = Union[int, torch.Tensor, None]  # a seed argument: an int, a 0-d int64 tensor, or None (drawn)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_p(p, name: str = "p") -> float:
    """A drop probability as a Python float in [0, 1]."""
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, checked first (NaN fails the comparison)
        return p
    if isinstance(p, torch.Tensor):
        if p.numel() != 1 or p.dtype == torch.bool or p.is_complex():
            raise TypeError(f"{name} must be a real number or a one-element tensor, got a tensor of shape {tuple(p.shape)} and dtype {p.dtype}")
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(p).__name__} {p!r}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def check_float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (fp16, bf16, fp32 or fp64), got {x.dtype}")
    return x


def check_mode(mode, name: str = "mode") -> bool:
    """``"sample"`` -> True (one draw per sample), ``"batch"`` -> False."""
    if mode not in ("sample", "batch"):
        raise ValueError(f"{name} must be one of ('sample', 'batch'), got {mode!r}")
    return mode == "sample"


def check_seed(seed) -> None:
    """A seed is None, an int in [0, 2**63) or a 0-d int64 tensor."""
    if seed is None:
        return
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError(f"seed tensor must be 0-d int64, got shape {tuple(seed.shape)} and dtype {seed.dtype}")
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2**63) or a 0-d int64 tensor, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")


def resolve_seed(seed, device: torch.device) -> torch.Tensor:
    """A 0-d int64 seed tensor on ``device`` (``seed`` already checked); ``None`` draws one from
    PyTorch's default generator of that device."""
    if seed is None:
        return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        return seed if seed.device == device else seed.to(device)
    return torch.tensor(int(seed), dtype=torch.int64, device=device)


def check_groups(groups) -> None:
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
        raise ValueError(f"groups must be a positive int, got {groups!r}")
