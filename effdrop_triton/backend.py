"""Which implementation runs an op: the Triton kernels or the PyTorch fallback; and whether the kernels'
launches are being traced into a graph (``launch_tracing``).

``"auto"`` runs Triton where it can (Triton importable and the tensor on a CUDA
device, or any device under ``TRITON_INTERPRET=1``) and the fallback elsewhere.
Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading

import torch

BACKENDS = ("auto", "triton", "torch")
# oldest NVIDIA architecture Triton supports (Ampere)
MIN_CUDA_CAPABILITY = (8, 0)


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
    """Triton's own reading of ``TRITON_INTERPRET``."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def kernels_traceable() -> bool:
    """A traced graph can launch the kernels itself (``torch.library.wrap_triton``); not the
    interpreter's, which run on host memory (they run inside an opaque op instead)."""
    return not _interpreting()


_has_triton = None
_interpret = None  # TRITON_INTERPRET as read at the first call (Triton reads it when the kernels are defined)
_supported_cuda_devices = {}
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def has_triton() -> bool:
    """Triton imports (checked on first use, never at package import)."""
    global _has_triton
    if _has_triton is None:
        try:
            import triton  # noqa: F401

            _has_triton = True
        except Exception:
            _has_triton = False
    return _has_triton


def _cuda_device_supported(index: int) -> bool:
    if index not in _supported_cuda_devices:
        _supported_cuda_devices[index] = (
            torch.version.hip is not None or torch.cuda.get_device_capability(index) >= MIN_CUDA_CAPABILITY
        )
    return _supported_cuda_devices[index]


def _why_not_triton(device: torch.device, dtype: torch.dtype):
    """Why the Triton kernels cannot run on tensors of ``dtype`` on ``device``, or None when they can."""
    global _interpret
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels take fp32/fp16/bf16, not {dtype}"
    if not has_triton():
        return "triton is not installed (or fails to import)"
    if _interpret is None:
        _interpret = _interpreting()
    if _interpret:
        return None
    if device.type != "cuda":
        return f"Triton cannot run on device {device} (set TRITON_INTERPRET=1 for the CPU interpreter)"
    index = torch.cuda.current_device() if device.index is None else device.index
    if not _cuda_device_supported(index):
        return f"{torch.cuda.get_device_name(index)} is older than compute capability {MIN_CUDA_CAPABILITY}"
    return None


def triton_supports(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels can run on ``tensor``."""
    return _why_not_triton(tensor.device, tensor.dtype) is None


def _decide(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """The backend decision; under ``torch.compile`` a constant of the graph, made when it is traced:
    dynamo then guards on the backend name alone, not on the caches the decision fills in (a guard on
    a cache that the first trace fills in would fail at the second call and compile the model again),
    and never traces the CUDA device queries."""
    reason = _why_not_triton(device, dtype)
    if reason is not None and backend == "triton":
        raise RuntimeError(f"backend 'triton' was requested but {reason}; use set_backend('auto') or 'torch'")
    return reason is None


# the mark torch.compiler.assume_constant_result sets, set here without importing torch._dynamo (which
# imports Triton); tests/test_compiled_step.py checks that it is that decorator's mark
_decide._dynamo_marked_constant = True


def use_triton(tensor: torch.Tensor) -> bool:
    """Decide the backend for one call; raises when ``"triton"`` is forced but cannot run."""
    if _backend == "torch":
        return False
    if torch.compiler.is_compiling():  # past the caches: dynamo would guard on them
        return _decide(_backend, tensor.device, tensor.dtype)
    if _has_triton and tensor.dtype in TRITON_DTYPES:  # the common cases, decided by an earlier call
        if _interpret or (tensor.is_cuda and _supported_cuda_devices.get(tensor.get_device())):
            return True
    return _decide(_backend, tensor.device, tensor.dtype)


def triton_kernels(name: str):
    """The module ``effdrop_triton.kernels.<name>`` (its Triton kernels and launchers), imported on the first
    use of one of its attributes (``importlib.util.LazyLoader``): the kernels need triton, which importing
    the package must not import, and an import statement in every call would cost the host more than the
    launch. After that first use it is the plain module."""
    full_name = f"effdrop_triton.kernels.{name}"
    if full_name in sys.modules:
        return sys.modules[full_name]
    spec = importlib.util.find_spec(full_name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    spec.loader.exec_module(module)
    return module


class _LaunchTracing(threading.local):
    active = False  # a class default: reading it costs no AttributeError on a thread that never set it


launch_tracing = _LaunchTracing()  # read by every launch (``kernels/common.py``'s ``launcher``)


@contextlib.contextmanager
def traced_launches():
    """Within: the launches are being traced into a graph (an op's functionalization rule runs its
    implementation under ``torch.compile``), so each goes through ``torch.library.wrap_triton``."""
    previous = launch_tracing.active
    launch_tracing.active = True
    try:
        yield
    finally:
        launch_tracing.active = previous
