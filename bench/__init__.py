"""Benchmarks: `make bench` runs them all; `python -m bench NAME` runs one. Each prints its figures
and ratios against a baseline measured in the same run on the same machine."""
