"""Synthetic data, checkpoint builders and a tiny real training run shared by the tests, the benchmarks
and the docs.

Not imported by the plugin itself; each module imports fairseq only where it needs it.
"""
