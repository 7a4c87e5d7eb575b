"""Triton kernels and their launchers (imported lazily: needs ``triton``)."""
