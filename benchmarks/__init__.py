"""Benchmarks: each prints figures and ratios measured in one run. Run from the repository
root as `python -m benchmarks.NAME` (docs/performance.md lists them with their figures)."""
