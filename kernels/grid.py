"""Launch-size arithmetic in plain Python, and the launch itself as a traced graph records it.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``@triton.jit`` functions in recent Triton
releases: called from Python they cost about 2 µs each, and a launcher makes up to a dozen
such calls per launch, which adds up at the small shapes where host time is the whole cost.
"""

from torch._C import _len_torch_dispatch_stack
from torch.library import wrap_triton


def launcher(kernel):
    """``kernel`` itself for an eager launch; ``wrap_triton(kernel)`` while an op's body is traced (a
    dispatch mode is active: functionalization under ``torch.compile``, fake tensors), so that the graph
    records the launch and a compiled graph makes it."""
    return wrap_triton(kernel) if _len_torch_dispatch_stack() else kernel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
