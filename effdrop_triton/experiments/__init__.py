"""Reproducible analyses from the paper."""
