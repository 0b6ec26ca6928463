"""Fail fast on missing or truncated binarized data, before a long job starts.

fairseq reads ``{split}.{src}-{tgt}.{lang}.{idx,bin}`` lazily: a truncated ``.bin`` surfaces
as an obscure ``np.frombuffer`` error whenever the first bad sentence is drawn, possibly
hours into training.  The index records every sentence's length, so the expected size of
the ``.bin`` file is known up front.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Sequence

import numpy as np


class BinarizedDataError(ValueError):
    """A binarized data file the task will read is missing or damaged."""


def _index_size_and_bytes(idx_path: str) -> int:
    """Bytes the ``.bin`` file must hold according to its fairseq mmap ``.idx`` file."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    try:
        index = MMapIndexedDataset.Index(idx_path)
    except Exception as e:  # fairseq raises AssertionError / ValueError on a bad header
        raise BinarizedDataError(f"{idx_path}: not a readable fairseq index file ({type(e).__name__}: {e})") from None
    sizes = np.asarray(index.sizes, dtype=np.int64)
    return int(sizes.sum()) * np.dtype(index.dtype).itemsize


def _prefix(data_dir: str, split: str, src: str, tgt: str, lang: str) -> str:
    """fairseq's own lookup order: ``split.src-tgt.lang``, then ``split.tgt-src.lang``."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = os.path.join(data_dir, f"{split}.{a}-{b}.{lang}")
        if os.path.exists(prefix + ".idx") or os.path.exists(prefix + ".bin"):
            return prefix
    raise BinarizedDataError(
        f"{data_dir}: no binarized {split} data for {src}-{tgt} ({lang} side): expected "
        f"{split}.{src}-{tgt}.{lang}.idx and .bin (as written by fairseq-preprocess or data_prep/)"
    )


def check_binarized(data_dirs: Sequence[str], splits: Iterable[str], lang_pairs: Iterable[str]) -> int:
    """Check every file the multilingual task will read; return how many files were checked."""
    seen = set()
    checked = 0
    pairs: List[str] = [p for p in lang_pairs if p]
    for data_dir in data_dirs:
        for split in splits:
            for pair in pairs:
                src, tgt = pair.split("-")
                for lang in (src, tgt):
                    prefix = _prefix(data_dir, split, src, tgt, lang)
                    for ext in ("idx", "bin"):
                        if not os.path.exists(f"{prefix}.{ext}"):
                            raise BinarizedDataError(f"{prefix}.{ext}: missing (its .{'bin' if ext == 'idx' else 'idx'} exists)")
                    key = os.path.realpath(prefix + ".bin")
                    if key in seen:
                        continue
                    seen.add(key)
                    expected = _index_size_and_bytes(prefix + ".idx")
                    actual = os.path.getsize(prefix + ".bin")
                    if actual != expected:
                        raise BinarizedDataError(
                            f"{prefix}.bin: {actual} bytes, but its index describes {expected}: the file is "
                            f"{'truncated' if actual < expected else 'longer than its index'}; binarize it again"
                        )
                    checked += 1
    return checked
