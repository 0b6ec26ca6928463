"""Deployment: fold adapters into plain fairseq checkpoints (merge) and convert to M2M-100 / transformers."""
