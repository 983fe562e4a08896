"""Benchmarks: load generator and comparison scripts (see README.md)."""
