"""Synthetic data and checkpoint builders shared by the tests, the benchmarks and the docs.

Not imported by the plugin itself; each module imports fairseq only where it needs it.
"""
