"""Benchmarks and machine checks (``make bench``, ``make soak``, ``make gpu-check``); not installed."""
