"""Which implementation runs an op: the Triton kernels or the PyTorch fallback.

``"auto"`` runs Triton where it can (Triton importable and the tensor on a CUDA
device, or any device under ``TRITON_INTERPRET=1``) and the fallback elsewhere.
Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _check_name(name) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


_backend = _check_name(os.environ.get("EFFDROP_BACKEND", "auto"))


def set_backend(name: str) -> None:
    """Select ``"auto"``, ``"triton"`` or ``"torch"`` for every op."""
    global _backend
    _backend = _check_name(name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager that selects a backend and restores the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_supports(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels can run on ``tensor``."""
    if not HAS_TRITON or tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    return tensor.device.type == "cuda" or _interpreting()


def use_triton(tensor: torch.Tensor) -> bool:
    """Decide the backend for one call; raises when ``"triton"`` is forced but cannot run."""
    if _backend == "torch":
        return False
    if triton_supports(tensor):
        return True
    if _backend == "triton":
        if not HAS_TRITON:
            reason = "triton is not installed"
        elif tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reason = f"the Triton kernels take fp32/fp16/bf16, not {tensor.dtype}"
        else:
            reason = f"Triton cannot run on device {tensor.device} (set TRITON_INTERPRET=1 for the CPU interpreter)"
        raise RuntimeError(f"backend 'triton' was requested but {reason}; use set_backend('auto') or 'torch'")
    return False
