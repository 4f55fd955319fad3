"""Benchmark scripts: each prints its figures and a ratio against a baseline from the same run."""
