"""Benchmarks: they print figures, they never pass or fail on speed."""
