"""``--bf16`` on a GPU or CPU with fairseq 0.12.

fairseq 0.12's ``parse_args_and_arch`` makes ``--bf16`` imply ``--tpu``; without torch_xla the
trainer then fails at once (``get_tpu_device`` imports it), so ``--bf16`` cannot train on a
GPU at all.  The ``lslo_*`` architecture functions run after that rule and undo it when
torch_xla is absent: the run stays on the device it would use in fp32 (GPU, or ``--cpu``).
"""
from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger(__name__)


def keep_bf16_off_tpu(args) -> None:
    """``args.tpu = False`` when only ``--bf16`` set it and torch_xla is not installed."""
    if getattr(args, "bf16", False) and getattr(args, "tpu", False) and importlib.util.find_spec("torch_xla") is None:
        args.tpu = False
        logger.info("LSLo: --bf16 without torch_xla: training in bfloat16 on the GPU (or --cpu), not on a TPU")
