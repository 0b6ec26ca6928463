"""Evaluation: decode many directions with one model load (decode) and the lslo-evaluate run (run)."""
