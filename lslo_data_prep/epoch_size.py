"""Estimate fairseq updates per epoch on prepared data (to express epoch-based schedules in updates).

    python -m lslo_data_prep.epoch_size DATA/bin --max-tokens 4000 --update-freq 4 --world-size 8

Reads sentence lengths from the binarized ``train.{lang}.idx`` files (fairseq's mmap index
format), adds the language tokens ``--encoder-langtok src --decoder-langtok`` put in, and
packs all directions' sentences the way fairseq's ``batch_by_size`` does (sorted by length,
``max length x sentences <= max tokens``, batch sizes rounded down to a multiple of 8).
The result is an estimate: ``translation_multi_simple_epoch`` samples directions (temperature
sampling), but with multi-way parallel data every direction has the same size, so an epoch
holds as many sentences as all directions together.
"""
from __future__ import annotations

import argparse
import math
import os
import struct
import sys
from typing import List

import numpy as np

from lslo_common.runner import run_tool

from .langsets import DataPrepError, read_langset

MAGIC = b"MMIDIDX\x00\x00"


def read_sizes(idx_path: str) -> np.ndarray:
    """Token counts (with </s>) of every sentence in a fairseq mmap ``.idx`` file."""
    with open(idx_path, "rb") as f:
        if f.read(9) != MAGIC:
            raise DataPrepError(f"{idx_path}: not a fairseq mmap index (dataset-impl mmap expected)")
        f.read(8 + 1)  # version, dtype code
        (length,) = struct.unpack("<Q", f.read(8))
        f.read(8)  # document count
        return np.frombuffer(f.read(4 * length), dtype=np.int32).astype(np.int64)


def count_batches(lengths: np.ndarray, max_tokens: int, multiple: int = 8) -> int:
    lengths = np.sort(lengths)
    batches, start, n = 0, 0, len(lengths)
    while start < n:
        end = start
        while end < n and lengths[end] * (end - start + 1) <= max_tokens:
            end += 1
        size = max(end - start, 1)
        if size > multiple:
            size -= size % multiple
        start += size
        batches += 1
    return batches


def updates_per_epoch(data: str, max_tokens: int, update_freq: int, world_size: int, split: str = "train") -> int:
    rows = read_langset(os.path.join(data, "langs.tsv"))
    sizes = {}
    for r in rows:
        other = next(o.code for o in rows if o.code != r.code)
        sizes[r.code] = read_sizes(os.path.join(data, f"{split}.{r.code}-{other}.{r.code}.idx"))
    lengths: List[np.ndarray] = []
    for src in rows:
        for tgt in rows:
            if src.code != tgt.code:
                lengths.append(np.maximum(sizes[src.code] + 1, sizes[tgt.code] + 1))
    batches = count_batches(np.concatenate(lengths), max_tokens)
    return max(1, math.ceil(math.ceil(batches / world_size) / update_freq))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="prepared fairseq data folder (OUT/bin)")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--update-freq", type=int, default=1)
    p.add_argument("--world-size", type=int, default=1)
    a = p.parse_args(argv)
    return run_tool("lslo_data_prep.epoch_size",
                    lambda: print(updates_per_epoch(a.data, a.max_tokens, a.update_freq, a.world_size)))


if __name__ == "__main__":
    sys.exit(main())
