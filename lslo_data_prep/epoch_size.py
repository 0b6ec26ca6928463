"""Estimate fairseq updates per epoch on prepared data (to express epoch-based schedules in updates).

    python -m lslo_data_prep.epoch_size DATA/bin --max-tokens 4000 --update-freq 4 --world-size 8 \\
        [--sampling-method temperature --sampling-temperature 5] [--virtual-epoch-size N]

Builds the epoch the way ``translation_multi_simple_epoch`` does and batches it with fairseq's own
``batch_by_size``:

* sentence lengths come from the binarized ``train.{src}-{tgt}.{lang}.idx`` files (fairseq's mmap
  index format) of every direction in ``lang_pairs.txt`` (or all pairs of ``langs.tsv``); source
  and target get one token each (``--encoder-langtok src --decoder-langtok``, as the recipes run);
* the epoch is the sampled dataset: every direction's share from ``--sampling-method`` (``concat``,
  fairseq's default, takes every sentence once; ``temperature`` and ``uniform`` resize each direction
  as fairseq does, at most 1.5 times the data), then, with ``--virtual-epoch-size N``, N of those
  sentences (fairseq's virtual epoch; the last one of a pass may be shorter);
* the order is fairseq's (by source length, ties by target length), each batch counts
  ``max(source, target) x sentences <= max tokens``, sizes rounded to multiples of 8;
* each of ``--world-size`` workers takes ``ceil(batches / world size)`` batches, ``--update-freq`` of
  them make one update.

Where the sampling draws sentences at random (a virtual epoch, or a direction resized by the
sampling), fairseq draws them anew each epoch; this estimate draws them once with a fixed seed, so it
can differ from a given epoch by a few batches.  With ``concat`` sampling and no virtual epoch it is
exact.
"""
from __future__ import annotations

import argparse
import math
import os
import struct
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from lslo_common.runner import run_tool

from .langsets import DataPrepError, directions, read_langset

MAGIC = b"MMIDIDX\x00\x00"
SAMPLING_METHODS = ("concat", "temperature", "uniform")


def read_sizes(idx_path: str) -> np.ndarray:
    """Token counts (with </s>) of every sentence in a fairseq mmap ``.idx`` file."""
    try:
        f = open(idx_path, "rb")
    except OSError as e:
        raise DataPrepError(f"{idx_path}: cannot read the binarized index ({e.strerror})") from None
    with f:
        if f.read(9) != MAGIC:
            raise DataPrepError(f"{idx_path}: not a fairseq mmap index (dataset-impl mmap expected)")
        f.read(8 + 1)  # version, dtype code
        (length,) = struct.unpack("<Q", f.read(8))
        # the sizes follow the length at once (then the pointers, then the document count)
        sizes = np.frombuffer(f.read(4 * length), dtype=np.int32)
    if len(sizes) != length:
        raise DataPrepError(f"{idx_path}: truncated index ({len(sizes)} of {length} sizes)")
    return sizes.astype(np.int64)


def count_batches(src: np.ndarray, tgt: Optional[np.ndarray] = None, max_tokens: int = 4000, multiple: int = 8) -> int:
    """Batches fairseq's ``batch_by_size`` makes of sentences ordered as
    ``SampledMultiDataset.ordered_indices`` orders them (by source length, then target length)."""
    from fairseq.data import data_utils

    tgt = src if tgt is None else tgt
    order = np.argsort(tgt, kind="mergesort")
    order = order[np.argsort(src[order], kind="mergesort")]
    num_tokens = np.maximum(src, tgt)[order].astype(np.int64)
    batches = data_utils.batch_by_size(np.arange(len(order), dtype=np.int64), num_tokens_fn=None,
                                       num_tokens_vec=num_tokens, max_tokens=max_tokens, max_sentences=None,
                                       required_batch_size_multiple=multiple)
    return len(batches)


def sampling_ratios(sizes: List[int], method: str, temperature: float) -> Optional[List[float]]:
    """fairseq's (unnormalised) sampling ratios of the directions; None for ``concat``."""
    if method == "concat":
        return None
    if method == "uniform":
        return [1.0] * len(sizes)
    total = sum(sizes)
    return [(s / total) ** (1.0 / temperature) for s in sizes]


def virtual_size(sizes: List[int], ratios: Optional[List[float]], max_scale_up: float = 1.5) -> int:
    """fairseq's ``default_virtual_size_func``: the sampled dataset's size."""
    if ratios is None:
        return sum(sizes)
    largest = int(np.argmax(sizes))
    vsize = sum(r / ratios[largest] * sizes[largest] for r in ratios)
    return int(min(vsize, sum(sizes) * max_scale_up))


def direction_sizes(data: str, split: str = "train") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'src-tgt': (source lengths, target lengths)} of every direction, language tokens not included."""
    pairs_file = os.path.join(data, "lang_pairs.txt")
    if os.path.isfile(pairs_file):
        with open(pairs_file, encoding="utf-8") as f:
            pairs = [p for p in f.read().strip().split(",") if p]
    else:
        pairs = directions(read_langset(os.path.join(data, "langs.tsv")))
    out = {}
    for pair in pairs:
        s, t = pair.split("-")
        src, tgt = (read_sizes(os.path.join(data, f"{split}.{pair}.{lang}.idx")) for lang in (s, t))
        if len(src) != len(tgt):
            raise DataPrepError(f"{data}: direction {pair} has {len(src)} source and {len(tgt)} target sentences")
        out[pair] = (src, tgt)
    return out


def epoch_lengths(sizes: Dict[str, Tuple[np.ndarray, np.ndarray]], sampling_method: str = "concat",
                  temperature: float = 1.5, virtual_epoch_size: Optional[int] = None,
                  langtoks: bool = True, seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(source, target) lengths of the sentences of one (virtual) epoch, as fairseq's model sees them."""
    rng = np.random.RandomState(seed)
    lens = [len(s) for s, _ in sizes.values()]
    ratios = sampling_ratios(lens, sampling_method, temperature)
    total = virtual_size(lens, ratios)
    src_parts, tgt_parts = [], []
    if ratios is None:
        counts = lens
    else:
        norm = np.array(ratios) / sum(ratios)
        counts = (total * norm).astype(np.int64)
        for i in rng.choice(len(lens), size=total - int(counts.sum()), p=norm):
            counts[i] += 1
    for (src, tgt), n in zip(sizes.values(), counts):
        pick = np.arange(len(src)) if n == len(src) else rng.choice(len(src), int(n), replace=n > len(src))
        src_parts.append(src[pick])
        tgt_parts.append(tgt[pick])
    src, tgt = np.concatenate(src_parts), np.concatenate(tgt_parts)
    if langtoks:  # --encoder-langtok src puts one token before the source, --decoder-langtok one in the target
        src, tgt = src + 1, tgt + 1
    if virtual_epoch_size is not None and virtual_epoch_size < len(src):
        keep = rng.permutation(len(src))[:virtual_epoch_size]
        src, tgt = src[keep], tgt[keep]
    return src, tgt


def updates_per_epoch(data: str, max_tokens: int, update_freq: int = 1, world_size: int = 1, split: str = "train",
                      sampling_method: str = "concat", temperature: float = 1.5,
                      virtual_epoch_size: Optional[int] = None, multiple: int = 8) -> int:
    if virtual_epoch_size is not None and virtual_epoch_size < 1:
        raise DataPrepError(f"--virtual-epoch-size must be a positive number of sentences, got {virtual_epoch_size}")
    src, tgt = epoch_lengths(direction_sizes(data, split), sampling_method, temperature, virtual_epoch_size)
    batches = count_batches(src, tgt, max_tokens, multiple)
    return max(1, math.ceil(math.ceil(batches / world_size) / update_freq))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lslo_data_prep.epoch_size", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="prepared fairseq data folder (OUT/bin)")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--update-freq", type=int, default=1)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--sampling-method", choices=SAMPLING_METHODS, default="concat",
                   help="as given to fairseq-train (default: concat, fairseq's)")
    p.add_argument("--sampling-temperature", type=float, default=1.5,
                   help="as given to fairseq-train (default: 1.5, fairseq's)")
    p.add_argument("--virtual-epoch-size", type=int, default=None,
                   help="as given to fairseq-train: sentences per (virtual) epoch")
    p.add_argument("--required-batch-size-multiple", type=int, default=8)
    a = p.parse_args(argv)
    return run_tool("lslo_data_prep.epoch_size", lambda: print(updates_per_epoch(
        a.data, a.max_tokens, a.update_freq, a.world_size, sampling_method=a.sampling_method,
        temperature=a.sampling_temperature, virtual_epoch_size=a.virtual_epoch_size,
        multiple=a.required_batch_size_multiple)))


if __name__ == "__main__":
    sys.exit(main())
