"""The corpora of :mod:`fairseq_lslo.testing.corpus`, binarized by fairseq-preprocess the way
translation_multi_simple_epoch reads them."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Sequence

from .corpus import make_corpus


def write_dictionary(path: str, corpus: Dict[str, Dict[str, List[str]]]) -> None:
    counts: Dict[str, int] = {}
    for per_lang in corpus.values():
        for sents in per_lang.values():
            for s in sents:
                for w in s.split():
                    counts[w] = counts.get(w, 0) + 1
    with open(path, "w", encoding="utf-8") as f:
        for w, c in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
            f.write(f"{w} {c}\n")


def bin_dir_for(root: str, langs: Sequence[str], pairs: Sequence[str], seed: int = 1, n_concepts: int = 12) -> str:
    """Raw text -> fairseq-preprocess (once per language) -> per-direction links.  Returns the data dir."""
    corpus = make_corpus(langs, n_concepts=n_concepts, seed=seed)
    raw, data = os.path.join(root, "raw"), os.path.join(root, "bin")
    os.makedirs(raw, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    for split, per_lang in corpus.items():
        for lang, sents in per_lang.items():
            with open(os.path.join(raw, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("\n".join(sents) + "\n")
    dict_path = os.path.join(root, "dict.txt")
    write_dictionary(dict_path, corpus)
    preprocess = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    for lang in langs:
        tmp = os.path.join(root, f"tmp-{lang}")
        subprocess.run(
            [preprocess, "--only-source", "--source-lang", lang, "--srcdict", dict_path, "--destdir", tmp,
             "--trainpref", os.path.join(raw, "train"), "--validpref", os.path.join(raw, "valid"),
             "--testpref", os.path.join(raw, "test"), "--workers", "1"],
            check=True, capture_output=True,
        )
        for split in corpus:
            for ext in ("bin", "idx"):
                src_file = os.path.join(tmp, f"{split}.{lang}-None.{lang}.{ext}")
                for pair in pairs:
                    s, t = pair.split("-")
                    if lang in (s, t):
                        os.link(src_file, os.path.join(data, f"{split}.{s}-{t}.{lang}.{ext}"))
        os.replace(os.path.join(tmp, "dict." + lang + ".txt"), os.path.join(data, f"dict.{lang}.txt"))
    return data
