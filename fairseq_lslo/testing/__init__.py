"""Test and documentation support: tiny synthetic corpora and a tiny real training run."""
