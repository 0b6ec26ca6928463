"""The device the routing and precision tests run on, and the half-precision dtypes it supports.

CPU by default; ``LSLO_TEST_DEVICE=cuda`` runs the same tests on the GPU (``make gpu-check``).
Asking for CUDA where torch sees none is an error, not a skip.
"""
from __future__ import annotations

import os
import warnings
from typing import List

import torch

TEST_DEVICE = torch.device(os.environ.get("LSLO_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("LSLO_TEST_DEVICE=cuda, but torch sees no CUDA device")


def autocast_computes_in(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device, dtype)`` really runs a matmul in ``dtype`` here (torch
    warns and disables autocast for a dtype the device does not support)."""
    a = torch.ones(2, 2, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                return torch.mm(a, a).dtype == dtype
        except RuntimeError:
            return False


def autocast_dtypes(device: torch.device = TEST_DEVICE) -> List[torch.dtype]:
    """bf16 always (the tests fail if it does not work); fp16 where autocast supports it."""
    return [torch.bfloat16] + ([torch.float16] if autocast_computes_in(device, torch.float16) else [])
