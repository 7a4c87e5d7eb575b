"""Measuring what a call keeps for backward: the one helper the tests and the benchmarks share."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import torch


def saved_for_backward(fn: Callable, *inputs) -> Tuple[Any, int]:
    """Run ``fn(*inputs)`` once; return its output and the bytes of the distinct storages autograd
    saved for backward (``saved_tensors_hooks``: a storage saved twice, or a view of a saved one,
    counts once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, sum(storages.values())
