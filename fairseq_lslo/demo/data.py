"""Benchmark text -> SentencePiece -> fairseq binaries, laid out for translation_multi_simple_epoch.

Each language is binarized once (one ``fairseq-preprocess --only-source`` call that takes all
its files as a comma-separated ``--validpref`` list); the per-direction files fairseq's
multilingual task reads are hard links to those binaries.  A direction ``s-t`` trains on the
first ``min(n_s, n_t)`` sentences, so each language has one binary per distinct prefix length.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from .benchmark import Benchmark

#: the two binarized datasets: pretraining (base model) and fine-tuning (every method)
PORTION_SPLITS = {"pretrain": ("train", "valid"), "finetune": ("train", "valid", "test")}


def fairseq_bin(name: str) -> str:
    """A fairseq console script installed beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), name)


def write_lines(path: str, lines: List[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def write_raw(bench: Benchmark, raw_dir: str) -> None:
    """``raw/{portion}.{split}.{lang}``: the rendered sentences, one per line."""
    os.makedirs(raw_dir, exist_ok=True)
    for portion, splits in bench.portions.items():
        for split, per_lang in splits.items():
            for lang, sents in per_lang.items():
                write_lines(os.path.join(raw_dir, f"{portion}.{split}.{lang}"), sents)


def train_sentencepiece(bench: Benchmark, raw_dir: str, spm_dir: str, vocab_size: int) -> str:
    """One unigram model over the pretraining text of all languages; returns the model path.

    The fine-tuning portion's new words are thus split into pieces the base model has seen,
    as a real pretrained model meets new words in new data."""
    import sentencepiece as spm

    os.makedirs(spm_dir, exist_ok=True)
    inputs = [os.path.join(raw_dir, f"pretrain.train.{lang}") for lang in bench.langs]
    prefix = os.path.join(spm_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=",".join(inputs), model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, num_threads=1, hard_vocab_limit=False, minloglevel=2, bos_id=-1, eos_id=-1, unk_id=0,
    )
    return prefix + ".model"


def encode_all(bench: Benchmark, raw_dir: str, spm_model: str, spm_dir: str) -> str:
    """Encode every raw file into pieces; write the fairseq dictionary; returns its path."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    for portion, splits in bench.portions.items():
        for split in splits:
            for lang in bench.langs:
                with open(os.path.join(raw_dir, f"{portion}.{split}.{lang}"), encoding="utf-8") as f:
                    lines = [" ".join(sp.encode(line.rstrip("\n"), out_type=str)) for line in f]
                write_lines(os.path.join(spm_dir, f"{portion}.{split}.{lang}"), lines)
    dict_path = os.path.join(spm_dir, "dict.txt")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_unknown(i) and not sp.is_control(i)]
    write_lines(dict_path, [f"{p} 1" for p in pieces])
    return dict_path


def binary_files(bench: Benchmark, lang: str) -> List[Tuple[str, str, int]]:
    """(portion, split, number of lines) of every binary language ``lang`` needs."""
    files = []
    for portion, splits in PORTION_SPLITS.items():
        own = bench.train_size(portion, lang)
        prefixes = sorted({bench.pair_size(portion, lang, other) for other in bench.langs if other != lang})
        files += [(portion, f"train{n}", n) for n in prefixes if n <= own]
        files += [(portion, split, -1) for split in splits if split != "train"]
    return files


def _preprocess_language(bench: Benchmark, lang: str, spm_dir: str, dict_path: str, work: str) -> None:
    """One ``fairseq-preprocess`` call binarizing every file language ``lang`` needs."""
    prefixes = []
    for portion, split, n in binary_files(bench, lang):
        prefix = os.path.join(work, f"{portion}.{split}")
        src = os.path.join(spm_dir, f"{portion}.{split.rstrip('0123456789') if n > 0 else split}.{lang}")
        with open(src, encoding="utf-8") as f:
            lines = f.read().splitlines()
        write_lines(f"{prefix}.{lang}", lines[:n] if n > 0 else lines)
        prefixes.append(prefix)
    cmd = [fairseq_bin("fairseq-preprocess"), "--only-source", "--source-lang", lang, "--srcdict", dict_path,
           "--validpref", ",".join(prefixes), "--destdir", os.path.join(work, lang), "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed for language {lang}:\n{done.stderr[-2000:]}")


def binarize(bench: Benchmark, spm_dir: str, dict_path: str, out_dir: str, jobs: int = 1) -> Dict[str, str]:
    """fairseq-preprocess once per language (``jobs`` at a time), then link per direction.

    Returns {portion: data dir}."""
    work = os.path.join(out_dir, "per-lang")
    dirs = {p: os.path.join(out_dir, p) for p in PORTION_SPLITS}
    for d in [work, *dirs.values()]:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(lambda lang: _preprocess_language(bench, lang, spm_dir, dict_path, work), bench.langs))
    pairs = [(s, t) for s in bench.langs for t in bench.langs if s != t]
    for lang in bench.langs:
        dest = os.path.join(work, lang)
        for k, (portion, split, _n) in enumerate(binary_files(bench, lang)):
            binary = os.path.join(dest, ("valid" if k == 0 else f"valid{k}") + f".{lang}-None.{lang}")
            for s, t in pairs:
                if lang not in (s, t):
                    continue
                if split.startswith("train"):
                    if int(split[len("train"):]) != bench.pair_size(portion, s, t):
                        continue
                    name = "train"
                else:
                    name = split
                for ext in ("bin", "idx"):
                    os.link(f"{binary}.{ext}", os.path.join(dirs[portion], f"{name}.{s}-{t}.{lang}.{ext}"))
        for d in dirs.values():
            shutil.copyfile(os.path.join(dest, f"dict.{lang}.txt"), os.path.join(d, f"dict.{lang}.txt"))
    return dirs
