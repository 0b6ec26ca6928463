"""A deterministic tiny *real* run: raw text -> SentencePiece -> binaries -> base -> LSLo fine-tune.

:func:`build_tiny_run` makes, under ``root`` (once; a second call reuses the files):

* ``raw/{split}.{lang}``: multi-way parallel en/fr/de text (:mod:`.corpus`), train/valid/test;
* ``spm/sentencepiece.bpe.model``: a tiny SentencePiece model trained on the raw training text;
* ``data/``: the text encoded with it and binarized for ``translation_multi_simple_epoch``
  (``dict.{lang}.txt``, ``{split}.{src}-{tgt}.{lang}.{bin,idx}`` for all 6 directions);
* ``base/checkpoint_last.pt``: a plain ``transformer`` trained on it with ``fairseq-train``;
* ``lslo/checkpoint_last.pt``: an LSLo model fine-tuned from the base
  (``--lslo-langs en:high,fr:high,de:low``).

Beside each checkpoint lie ``dict.txt``, ``sentencepiece.bpe.model`` and
``language_pairs.txt``, as in a published FLORES-101 model directory, so tools that look for
them next to a checkpoint find them.  It takes about half a minute on one core.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

from lslo_common.atomic import atomic_write

from .corpus import Corpus, make_corpus

LANGS: Tuple[str, ...] = ("en", "fr", "de")
PAIRS: Tuple[str, ...] = ("en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr")
SPLITS = ("train", "valid", "test")
ARCH_FLAGS: Tuple[str, ...] = (
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--encoder-normalize-before", "--decoder-normalize-before",  # pre-norm, as M2M-100 (lslo-export-hf needs it)
)
LSLO_FLAGS: Tuple[str, ...] = ("--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4")
SPM_VOCAB = 64
BASE_UPDATES, LSLO_UPDATES = 300, 60
#: bump when anything above changes: a cached run of another version is rebuilt
VERSION = 2
MANIFEST = "tiny_run.json"
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the fairseq_lslo package


@dataclass(frozen=True)
class TinyRun:
    """Paths of a finished tiny run (see the module docstring)."""

    root: str
    raw: str
    spm: str
    data: str
    base: str
    ckpt: str
    langs: Tuple[str, ...]
    pairs: Tuple[str, ...]
    arch_flags: Tuple[str, ...]

    def env(self) -> Dict[str, str]:
        """The variables runnable documentation blocks use."""
        return {
            "USER_DIR": USER_DIR, "DATA": self.data, "SPM": self.spm, "RAW": self.raw, "BASE": self.base,
            "CKPT": self.ckpt, "PAIRS": ",".join(self.pairs), "TINY_ARCH": " ".join(self.arch_flags),
        }

    def task_flags(self) -> List[str]:
        """fairseq's flags for the task the run was trained with."""
        return ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(self.pairs),
                "--encoder-langtok", "src", "--decoder-langtok"]


def build_tiny_run(root: str) -> TinyRun:
    """Build the run under ``root``, or return the one already there."""
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    run = _layout(root)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes asking for one root: the second waits, then reuses
        if _manifest_matches(root, run):
            return run
        _build(run)
        text = json.dumps({"version": VERSION, **asdict(run)}, indent=1)
        atomic_write(os.path.join(root, MANIFEST), lambda f: f.write(text.encode()))
    return run


def _layout(root: str) -> TinyRun:
    return TinyRun(
        root=root, raw=os.path.join(root, "raw"), spm=os.path.join(root, "spm", "sentencepiece.bpe.model"),
        data=os.path.join(root, "data"), base=os.path.join(root, "base", "checkpoint_last.pt"),
        ckpt=os.path.join(root, "lslo", "checkpoint_last.pt"), langs=LANGS, pairs=PAIRS, arch_flags=ARCH_FLAGS,
    )


def _manifest_matches(root: str, run: TinyRun) -> bool:
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return False
    files = [run.spm, run.base, run.ckpt, os.path.join(run.data, "dict.en.txt")]
    return stored.get("version") == VERSION and all(os.path.isfile(p) for p in files)


def _build(run: TinyRun) -> None:
    for sub in ("raw", "spm", "data", "base", "lslo"):
        shutil.rmtree(os.path.join(run.root, sub), ignore_errors=True)
    corpus = make_corpus(LANGS)
    write_raw(corpus, run.raw)
    train_spm(run.raw, run.spm)
    dictionary = write_dictionary(run.spm, os.path.join(run.root, "spm", "dict.txt"))
    binarize(corpus, run.spm, dictionary, run.data)
    train(run, run.base, ["--arch", "transformer", "--lr", "0.005", "--max-update", str(BASE_UPDATES)])
    train(run, run.ckpt, ["--user-dir", USER_DIR, "--arch", "lslo_transformer", *LSLO_FLAGS, "--lr", "0.01",
                          "--max-update", str(LSLO_UPDATES), "--finetune-from-model", run.base])
    for ckpt in (run.base, run.ckpt):
        publish_beside(ckpt, run.spm, dictionary, run.pairs)


def write_raw(corpus: Corpus, raw: str) -> None:
    os.makedirs(raw, exist_ok=True)
    for split, per_lang in corpus.items():
        for lang, sents in per_lang.items():
            with open(os.path.join(raw, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("\n".join(sents) + "\n")


def train_spm(raw: str, model: str) -> None:
    import sentencepiece as spm

    os.makedirs(os.path.dirname(model), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(os.path.join(raw, f"train.{lang}") for lang in LANGS), model_prefix=model[: -len(".model")],
        vocab_size=SPM_VOCAB, model_type="bpe", character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        minloglevel=2, bos_id=-1, eos_id=-1, unk_id=0, seed_sentencepiece_size=1000,
    )


def write_dictionary(model: str, path: str) -> str:
    """The fairseq dictionary of the SentencePiece vocabulary (as the published ``dict.txt``)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_unknown(i) or sp.is_control(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    return path


def binarize(corpus: Corpus, model: str, dict_path: str, data: str) -> None:
    """Encode with SentencePiece and binarize with fairseq's own builders, once per language and split;
    the per-direction files the multilingual task reads are hard links."""
    import sentencepiece as spm
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    sp = spm.SentencePieceProcessor(model_file=model)
    d = Dictionary.load(dict_path)
    os.makedirs(data, exist_ok=True)
    for lang in LANGS:
        d.save(os.path.join(data, f"dict.{lang}.txt"))
    for split, per_lang in corpus.items():
        for lang, sents in per_lang.items():
            prefix = os.path.join(data, f"{split}.{lang}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for sent in sents:
                pieces = " ".join(sp.encode(sent, out_type=str))
                builder.add_item(d.encode_line(pieces, add_if_not_exist=False, append_eos=True).to(torch.int32))
            builder.finalize(prefix + ".idx")
            for pair in PAIRS:
                if lang in pair.split("-"):
                    for ext in ("bin", "idx"):
                        os.link(f"{prefix}.{ext}", os.path.join(data, f"{split}.{pair}.{lang}.{ext}"))
            for ext in ("bin", "idx"):
                os.unlink(f"{prefix}.{ext}")


def train(run: TinyRun, ckpt: str, flags: Sequence[str]) -> None:
    """One ``fairseq-train`` run into the checkpoint's directory (its log beside it)."""
    save_dir = os.path.dirname(ckpt)
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-train"), run.data, *run.task_flags(),
           *run.arch_flags, *flags, "--cpu", "--seed", "1", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
           "--max-tokens", "600", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--dropout", "0.0", "--num-workers", "0", "--no-epoch-checkpoints",
           "--log-format", "simple", "--log-interval", "50", "--save-dir", save_dir, "--disable-validation"]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.makedirs(save_dir, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    with open(os.path.join(save_dir, "train.log"), "w", encoding="utf-8") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0 or not os.path.isfile(ckpt):
        raise RuntimeError(f"tiny run: fairseq-train for {ckpt} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def publish_beside(ckpt: str, spm_model: str, dict_path: str, pairs: Sequence[str]) -> None:
    """``dict.txt``, ``sentencepiece.bpe.model`` and ``language_pairs.txt`` next to the checkpoint."""
    folder = os.path.dirname(ckpt)
    shutil.copyfile(dict_path, os.path.join(folder, "dict.txt"))
    shutil.copyfile(spm_model, os.path.join(folder, "sentencepiece.bpe.model"))
    with open(os.path.join(folder, "language_pairs.txt"), "w", encoding="utf-8") as f:
        f.write(",".join(pairs) + "\n")
