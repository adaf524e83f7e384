"""Benchmarks of copyai-exporter against the simulator: `python -m benchmarks`.

Every row is measured in the same run side by side with its theoretical limit and with
a naive baseline exporter (benchmarks/naive.py). See BENCHMARKS.md for what each row
measures and the latest results.
"""
