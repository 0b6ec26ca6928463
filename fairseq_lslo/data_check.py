"""Fail fast on missing, damaged or mismatched data, before a long job starts.

fairseq reads ``{split}.{src}-{tgt}.{lang}`` lazily: a truncated ``.bin`` surfaces as an obscure
``np.frombuffer`` error whenever the first bad sentence is drawn, possibly hours into training.
The index records every sentence, so the size the ``.bin`` file must have is known up front, and
so is the sentence count both sides of a pair must share.  Indexes are read with fairseq's own
readers (``fairseq.data.indexed_dataset``).

Every ``--dataset-impl`` fairseq offers, for ``translation_multi_simple_epoch`` (fairseq 0.12):

* ``mmap`` (fairseq-preprocess' default) and ``lazy``: checked;
* unset: fairseq picks the format from each index header: ``mmap`` is checked; a lazy/cached
  header makes fairseq use ``cached`` (below): the message says to pass ``--dataset-impl lazy``;
* ``cached``: refused.  Its dataset is only filled by ``prefetch``, which fairseq's batch iterator
  calls only when the dataset declares ``supports_prefetch``; the task's training dataset
  (``SampledMultiDataset``) does not, so the first training sample fails with a ``KeyError``.
  The same files work with ``--dataset-impl lazy``;
* ``raw``: refused.  The task counts data shards by their ``.idx`` files
  (``MultilingualDatasetManager._get_shard_num_dict``), so text files fail with
  ``KeyError: 'main:src-tgt'`` before any is read;
* ``huffman``: refused.  It decodes to the Huffman coder's own symbol ids, not the task
  dictionary's, and appends no ``</s>``: the model would silently read other tokens;
* ``fasta``: refused: it reads protein FASTA files, not translation data.
"""
from __future__ import annotations

import itertools
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import LSLoError


class BinarizedDataError(LSLoError, ValueError):
    """A data file the task will read is missing or damaged."""


CHECKED = ("mmap", "lazy")
BINARIZE = "binarize with fairseq-preprocess (--dataset-impl mmap, its default)"
REFUSED = {
    "cached": "fairseq's translation_multi_simple_epoch never prefetches its training data (SampledMultiDataset does "
              "not declare supports_prefetch), and a cached dataset is empty until prefetched: the first training "
              "sample fails with a KeyError. The same files work with --dataset-impl lazy",
    "raw": "fairseq's translation_multi_simple_epoch counts data shards by their .idx files, so raw text data fails "
           "with KeyError 'main:SRC-TGT' before it is read; " + BINARIZE,
    "huffman": "a huffman dataset decodes to its Huffman coder's own symbol ids, not the task dictionary's, and "
               "appends no </s>: the model would silently read other tokens; " + BINARIZE,
    "fasta": "it reads protein FASTA files (fairseq's EncodedFastaDataset), not translation data; " + BINARIZE,
}
HEADER_NAMES = {"cached": "lazy/cached (TNTIDX)", "mmap": "mmap (MMIDIDX)", "huffman": "huffman (HUFFIDX)"}


def _fairseq_impls() -> List[str]:
    from fairseq.data.indexed_dataset import get_available_dataset_impl

    return list(get_available_dataset_impl())


def check_impl(dataset_impl: Optional[str]) -> None:
    """Refuse, with fairseq's reason, an impl translation_multi_simple_epoch cannot read."""
    if dataset_impl is None:
        return
    if dataset_impl not in _fairseq_impls():
        raise BinarizedDataError(f"--dataset-impl {dataset_impl}: unknown (fairseq offers {', '.join(_fairseq_impls())})")
    if dataset_impl in REFUSED:
        raise BinarizedDataError(f"--dataset-impl {dataset_impl} cannot be used here: {REFUSED[dataset_impl]}")


def _files(path: str) -> List[str]:
    return [path + ".idx", path + ".bin"]


def _exists(path: str) -> bool:
    """fairseq's ``dataset_exists`` for mmap, lazy and unset impls: the .idx and the .bin."""
    return all(os.path.exists(f) for f in _files(path))


def _header_impl(path: str) -> Optional[str]:
    """The format of an index by its header, as fairseq's ``infer_dataset_impl`` tells them apart
    ('cached' for lazy/cached, 'mmap', 'huffman'), or None."""
    from fairseq.data.huffman.huffman_mmap_indexed_dataset import HuffmanMMapIndex
    from fairseq.data.indexed_dataset import IndexedDataset, MMapIndexedDataset

    with open(path + ".idx", "rb") as f:
        magic = f.read(8)
    for impl, header in (("cached", IndexedDataset._HDR_MAGIC), ("mmap", MMapIndexedDataset.Index._HDR_MAGIC),
                         ("huffman", HuffmanMMapIndex._HDR_MAGIC)):
        if magic == header[:8]:
            return impl
    return None


def _index_facts(path: str, impl: str):
    """(sentences, bytes the .bin must hold) from the index, read with fairseq's own readers."""
    from fairseq.data import indexed_dataset as ix

    try:
        if impl == "mmap":
            index = ix.MMapIndexedDataset.Index(path + ".idx")
            sizes = np.asarray(index.sizes, dtype=np.int64)
            return len(sizes), int(sizes.sum()) * np.dtype(index.dtype).itemsize
        index = ix.IndexedDataset(path)  # reads the index only; the .bin is opened on first access
        return len(index), int(index.data_offsets[-1]) * int(index.element_size)
    except Exception as e:  # fairseq raises AssertionError / ValueError / struct.error on a bad header
        raise BinarizedDataError(f"{path}.idx: not a readable fairseq {impl} index ({type(e).__name__}: {e})") from None


def check_dataset(path: str, impl: Optional[str]) -> int:
    """Check one dataset (``dir/split.src-tgt.lang``) for ``--dataset-impl impl``; return its sentence count."""
    found = _header_impl(path)
    if found is None:
        raise BinarizedDataError(f"{path}.idx: not a fairseq index (unknown header); binarize it again with fairseq-preprocess")
    if impl is None and found != "mmap":
        reason = (REFUSED["cached"] + ": pass --dataset-impl lazy") if found == "cached" else REFUSED[found]
        raise BinarizedDataError(
            f"{path}.idx is a {HEADER_NAMES[found]} index; without --dataset-impl fairseq reads it as {found}, "
            f"and {reason}"
        )
    wanted = "cached" if impl == "lazy" else (impl or found)  # lazy and cached share one index format
    if found != wanted:
        advice = "lazy" if found == "cached" else found
        raise BinarizedDataError(
            f"{path}.idx is a {HEADER_NAMES[found]} index, but --dataset-impl {impl} reads "
            f"{HEADER_NAMES[wanted]} indexes: pass --dataset-impl {advice}"
            + ("" if found != "huffman" else f" ({REFUSED['huffman']})")
        )
    sentences, expected = _index_facts(path, impl or found)
    actual = os.path.getsize(path + ".bin")
    if actual != expected:
        raise BinarizedDataError(
            f"{path}.bin: {actual} bytes, but its index describes {expected}: the file is "
            f"{'truncated' if actual < expected else 'longer than its index'}; binarize it again"
        )
    return sentences


def _shards(data_dir: str, split: str, src: str, tgt: str) -> List[Tuple[str, str]]:
    """(split_k, prefix) of every shard fairseq reads for a direction: ``split``, ``split1``, ... and,
    as in MultilingualDatasetManager.load_lang_dataset, ``split_k.src-tgt.`` if the *source* side
    exists there, else ``split_k.tgt-src.``."""
    shards = []
    for k in itertools.count():
        split_k = split + (str(k) if k else "")
        found = [os.path.join(data_dir, f"{split_k}.{a}-{b}.") for a, b in ((src, tgt), (tgt, src))]
        found = [prefix for prefix in found if _exists(prefix + src)]
        if not found:
            if k == 0:
                raise _missing(os.path.join(data_dir, f"{split}.{src}-{tgt}."), split, src, tgt, src)
            return shards
        shards.append((split_k, found[0]))
    return shards


def _missing(prefix: str, split: str, src: str, tgt: str, lang: str) -> BinarizedDataError:
    path = prefix + lang
    partial = [os.path.basename(f) for f in _files(path) if os.path.exists(f)]
    hint = f" ({partial[0]} exists)" if partial else ""
    if not partial and os.path.isfile(path):
        hint = f" ({os.path.basename(path)} is raw text: --dataset-impl raw {REFUSED['raw']})"
    return BinarizedDataError(
        f"{os.path.dirname(prefix)}: no binarized {split} data for {src}-{tgt} ({lang} side): expected "
        f"{os.path.basename(path)}.idx and .bin{hint} (as written by fairseq-preprocess or lslo_data_prep/)"
    )


def check_binarized(data_dirs: Sequence[str], splits: Iterable[str], lang_pairs: Iterable[str],
                    dataset_impl: Optional[str] = None) -> int:
    """Check every file the multilingual task will read; return how many datasets were checked."""
    dataset_impl = None if dataset_impl is None else str(dataset_impl)
    check_impl(dataset_impl)
    counted: Dict[str, int] = {}
    pairs: List[str] = [p for p in lang_pairs if p]
    for data_dir in data_dirs:
        for split in splits:
            for pair in pairs:
                src, tgt = pair.split("-")
                for split_k, prefix in _shards(data_dir, split, src, tgt):
                    counts = []
                    for lang in (src, tgt):
                        path = prefix + lang
                        if not _exists(path):
                            raise _missing(prefix, split_k, src, tgt, lang)
                        key = os.path.realpath(path)
                        if key not in counted:
                            counted[key] = check_dataset(path, dataset_impl)
                        counts.append(counted[key])
                    if counts[0] != counts[1]:
                        raise BinarizedDataError(
                            f"{prefix}{src} has {counts[0]} sentences but {prefix}{tgt} has {counts[1]}: the two "
                            f"sides of {src}-{tgt} must be parallel; binarize them again from aligned text"
                        )
    return len(counted)


def check_training_data(task) -> None:
    """In fairseq-train, fail before the first update if a data file is missing, truncated or in another
    format than ``--dataset-impl`` (every impl fairseq offers: see data_check.py)."""
    targs = getattr(task, "args", None)
    pairs = getattr(task, "lang_pairs", None)
    if not getattr(task, "training", False) or not pairs or not getattr(targs, "data", None):
        return
    dirs = targs.data.split(":")
    impl = getattr(targs, "dataset_impl", None)
    check_binarized(dirs, [targs.train_subset], pairs, impl)
    valid = [s for s in str(getattr(targs, "valid_subset", "")).split(",") if s]
    if valid and not getattr(targs, "disable_validation", False):
        check_binarized(dirs[:1], valid, pairs, impl)
