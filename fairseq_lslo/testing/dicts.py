"""Dictionaries and a few binarized sentences: enough for fairseq to set up a multilingual task."""
from __future__ import annotations

import os
from typing import Sequence

import torch

LANGS = ["en", "fr", "de"]
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]


def write_dicts(path: str, langs: Sequence[str] = LANGS, n_words: int = 30, pairs: Sequence[str] = PAIRS) -> str:
    """dict.{lang}.txt files plus a few binarized train/valid sentences per direction."""
    os.makedirs(path, exist_ok=True)
    for lang in langs:
        with open(os.path.join(path, f"dict.{lang}.txt"), "w") as f:
            for i in range(n_words):
                f.write(f"w{i} {100 - i}\n")
    write_tiny_binarized(path, pairs)
    return path


def write_tiny_binarized(path: str, pairs: Sequence[str]) -> None:
    """Three short sentences per split/direction/side, so fairseq-train's data check passes."""
    from fairseq.data import Dictionary, indexed_dataset

    lang = pairs[0].split("-")[0]
    d = Dictionary.load(os.path.join(path, f"dict.{lang}.txt"))
    for split in ("train", "valid"):
        for pair in pairs:
            for side in pair.split("-"):
                prefix = os.path.join(path, f"{split}.{pair}.{side}")
                builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
                for n in (3, 5, 4):
                    builder.add_item(torch.tensor([d.nspecial + i for i in range(n)] + [d.eos()], dtype=torch.int32))
                builder.finalize(prefix + ".idx")
