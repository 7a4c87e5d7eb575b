"""Launch-size arithmetic in plain Python, and the launch itself as a traced graph records it.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``@triton.jit`` functions in recent Triton
releases: called from Python they cost about 2 µs each, and a launcher makes up to a dozen
such calls per launch, which adds up at the small shapes where host time is the whole cost.
"""

import contextlib
import threading

from torch.library import wrap_triton

class _Tracing(threading.local):
    active = False  # a class default: reading it costs no AttributeError on a thread that never set it


_tracing = _Tracing()


@contextlib.contextmanager
def traced_launches():
    """Within: the launches are being traced into a graph (an op's functionalization rule runs its
    implementation under ``torch.compile``)."""
    previous = _tracing.active
    _tracing.active = True
    try:
        yield
    finally:
        _tracing.active = previous


def launcher(kernel):
    """``kernel`` itself for an eager launch; ``wrap_triton(kernel)`` while the launch is traced, so that
    the graph records it and the compiled graph makes it."""
    return wrap_triton(kernel) if _tracing.active else kernel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
