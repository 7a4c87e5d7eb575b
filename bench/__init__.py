"""Benchmarks of the four dropout ops against their PyTorch baselines (run: pytest bench)."""
