"""Split, SentencePiece-encode and binarize FLORES-101 for ``translation_multi_simple_epoch``.

    python -m lslo_data_prep.prepare --langs lslo_data_prep/langs/lang12.tsv \
        --flores-dir DIR/flores101_dataset --model-dir DIR/flores101_mm100_615M --out OUT

Steps (each skipped when its stamp in ``OUT/.stamps`` matches its inputs):
  1. raw/{train,valid,test}.{code}   plain text; default split: train = ``dev`` minus its last
                                      ``--valid-size`` sentences, valid = those, test = ``devtest``
  2. spm/{split}.{code}              encoded with the checkpoint's own SentencePiece model
  3. lang/{split}.{code}.{bin,idx}   fairseq-preprocess with the checkpoint's dictionary,
                                      once per language (all three splits in one call)
  4. bin/                             the data folder fairseq reads: per-direction names
                                      ``{split}.{src}-{tgt}.{lang}.{bin,idx}`` as hard links (or
                                      symlinks) to lang/, ``dict.{code}.txt``, ``lang_pairs.txt``
                                      (comma-separated directions), ``lang_dict.txt`` (the
                                      checkpoint's language list for ``--lang-dict``), ``langs.tsv``
Every file is written under a temporary name and renamed; a stamp is written last.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from lslo_common.atomic import atomic_copy, atomic_write_text
from lslo_common.langset_file import LangRow
from lslo_common.runner import run_tool

from .fsutil import Stamps, link_atomic, sha256_file, sha256_text
from .langsets import DataPrepError, directions, read_langset

SPLITS = ("train", "valid", "test")


def crash_point(step: str, code: str) -> None:
    """Test hook: ``DATA_PREP_CRASH_AT=step:code`` SIGKILLs this process at that point."""
    if os.environ.get("DATA_PREP_CRASH_AT") == f"{step}:{code}":
        os.kill(os.getpid(), signal.SIGKILL)


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def flores_file(flores_dir: str, split: str, row: LangRow) -> str:
    path = os.path.join(flores_dir, split, f"{row.flores}.{split}")
    if not os.path.isfile(path):
        raise DataPrepError(
            f"--flores-dir: no file {path} for language {row.code} (FLORES code {row.flores!r}); "
            f"check the FLORES code in the language set or the folder (it must hold dev/ and devtest/)"
        )
    return path


class Preparer:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.rows = read_langset(a.langs)
        self.out = os.path.abspath(a.out)
        self.stamps = Stamps(os.path.join(self.out, ".stamps"))
        self.tmp = os.path.join(self.out, ".tmp")
        self.flores_dir = self._flores_root(a.flores_dir)
        self.spm_model = self._model_file("sentencepiece.bpe.model", a.spm_model)
        self.dictionary = self._model_file("dict.txt", a.dict)
        self.ran: List[str] = []
        self._hashes: Dict[str, str] = {}

    # -- inputs -----------------------------------------------------------------------------
    @staticmethod
    def _flores_root(path: str) -> str:
        for candidate in (path, os.path.join(path, "flores101_dataset")):
            if os.path.isdir(os.path.join(candidate, "dev")) and os.path.isdir(os.path.join(candidate, "devtest")):
                return candidate
        raise DataPrepError(f"--flores-dir {path!r}: expected a folder with dev/ and devtest/ (flores101_dataset)")

    def _model_file(self, name: str, override: Optional[str]) -> str:
        path = override or os.path.join(self.a.model_dir or "", name)
        if not os.path.isfile(path):
            raise DataPrepError(f"--model-dir: {path} is missing (the checkpoint archive holds {name})")
        return path

    def model_languages(self) -> List[str]:
        """The checkpoint's language list, ordered as fairseq orders it when it infers it from
        ``language_pairs.txt`` (sorted): its position fixes each ``__xx__`` token id."""
        path = self.a.language_pairs or os.path.join(self.a.model_dir or "", "language_pairs.txt")
        if not os.path.isfile(path):
            print(f"warning: {path} missing: the language list (--lang-dict) is only the language set", file=sys.stderr)
            return sorted(r.code for r in self.rows)
        text = open(path, encoding="utf-8").read().replace("\n", ",")
        langs = sorted({x.strip() for p in text.split(",") if p.strip() for x in p.split("-")})
        missing = [r.code for r in self.rows if r.code not in langs]
        if missing:
            raise DataPrepError(
                f"{self.a.langs}: language {missing[0]!r} is not supported by the checkpoint ({path} lists {len(langs)} languages)"
            )
        return langs

    # -- steps ------------------------------------------------------------------------------
    def split_lines(self, row: LangRow) -> Tuple[Dict[str, List[str]], str]:
        a = self.a
        sources = {s: flores_file(self.flores_dir, getattr(a, f"{s}_split"), row) for s in SPLITS}
        train = read_lines(sources["train"])
        if a.valid_split == a.train_split:
            if a.valid_size <= 0 or a.valid_size >= len(train):
                raise DataPrepError(
                    f"--valid-size {a.valid_size}: must be between 1 and {len(train) - 1} to hold sentences out of "
                    f"{sources['train']} ({len(train)} lines)"
                )
            valid, train = train[-a.valid_size:], train[: -a.valid_size]
        else:
            valid = read_lines(sources["valid"])
            if a.valid_size > 0:
                valid = valid[: a.valid_size]
        test = read_lines(sources["test"])
        digest = sha256_text(repr((a.train_split, a.valid_split, a.test_split, a.valid_size,
                                   [sha256_file(sources[s]) for s in SPLITS])))
        return {"train": train, "valid": valid, "test": test}, digest

    def step_raw(self, row: LangRow) -> None:
        outputs = {s: os.path.join(self.out, "raw", f"{s}.{row.code}") for s in SPLITS}
        lines, digest = self.split_lines(row)
        step = f"raw.{row.code}"
        if self.stamps.done(step, digest, outputs):
            return
        self.stamps.clear(step)
        for s in SPLITS:
            atomic_write_text(outputs[s], "\n".join(lines[s]) + "\n")
        self.stamps.write(step, digest, outputs)
        self.ran.append(step)

    def step_spm(self, row: LangRow, processor_cache: list) -> None:
        inputs = {s: os.path.join(self.out, "raw", f"{s}.{row.code}") for s in SPLITS}
        outputs = {s: os.path.join(self.out, "spm", f"{s}.{row.code}") for s in SPLITS}
        digest = sha256_text(repr((self.model_hash(self.spm_model), [self.stamps.output_hash(f"raw.{row.code}", s) for s in SPLITS])))
        step = f"spm.{row.code}"
        if self.stamps.done(step, digest, outputs):
            return
        self.stamps.clear(step)
        if not processor_cache:
            import sentencepiece as spm

            processor_cache.append(spm.SentencePieceProcessor(model_file=self.spm_model))
        sp = processor_cache[0]
        for s in SPLITS:
            pieces = sp.encode(read_lines(inputs[s]), out_type=str)
            atomic_write_text(outputs[s], "\n".join(" ".join(p) for p in pieces) + "\n")
        self.stamps.write(step, digest, outputs)
        self.ran.append(step)

    def step_binarize(self, row: LangRow) -> None:
        code = row.code
        outputs = {f"{s}.{ext}": os.path.join(self.out, "lang", f"{s}.{code}.{ext}") for s in SPLITS for ext in ("bin", "idx")}
        digest = sha256_text(repr((self.model_hash(self.dictionary), [self.stamps.output_hash(f"spm.{code}", s) for s in SPLITS])))
        step = f"binarize.{code}"
        if self.stamps.done(step, digest, outputs):
            return
        self.stamps.clear(step)
        work = os.path.join(self.tmp, f"binarize-{code}")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        spm_prefix = os.path.join(self.out, "spm")
        run_preprocess([
            "--only-source", "--source-lang", code, "--srcdict", self.dictionary, "--destdir", work,
            "--trainpref", os.path.join(spm_prefix, "train"), "--validpref", os.path.join(spm_prefix, "valid"),
            "--testpref", os.path.join(spm_prefix, "test"), "--workers", str(self.a.workers), "--dataset-impl", "mmap",
        ])
        os.makedirs(os.path.join(self.out, "lang"), exist_ok=True)
        for i, (name, final) in enumerate(outputs.items()):
            split, ext = name.split(".")
            os.replace(os.path.join(work, f"{split}.{code}-None.{code}.{ext}"), final)
            if i == 0:
                crash_point("binarize", code)
        shutil.rmtree(work, ignore_errors=True)
        self.stamps.write(step, digest, outputs)
        self.ran.append(step)

    def step_links(self, model_langs: Sequence[str]) -> None:
        """The fairseq data folder: per-direction hard links, dictionaries, language lists."""
        data = os.path.join(self.out, "bin")
        os.makedirs(data, exist_ok=True)
        pairs = directions(self.rows)
        made = 0
        for pair in pairs:
            src, tgt = pair.split("-")
            for split in SPLITS:
                for lang in (src, tgt):
                    for ext in ("bin", "idx"):
                        target = os.path.join(data, f"{split}.{pair}.{lang}.{ext}")
                        source = os.path.join(self.out, "lang", f"{split}.{lang}.{ext}")
                        if not (os.path.exists(target) and os.path.samefile(source, target)):
                            link_atomic(source, target)
                            made += 1
        dict_copy = os.path.join(data, "dict.txt")
        if not (os.path.exists(dict_copy) and sha256_file(dict_copy) == self.model_hash(self.dictionary)):
            atomic_copy(self.dictionary, dict_copy)
            made += 1
        for row in self.rows:
            target = os.path.join(data, f"dict.{row.code}.txt")
            if not (os.path.exists(target) and os.path.samefile(dict_copy, target)):
                link_atomic(dict_copy, target)
                made += 1
        texts = {
            "lang_pairs.txt": ",".join(pairs) + "\n",
            "lang_dict.txt": "".join(f"{lang}\n" for lang in model_langs),
            "langs.tsv": "".join(f"{r.code}\t{r.flores}\t{r.group}\n" for r in self.rows),
        }
        for name, text in texts.items():
            path = os.path.join(data, name)
            if not (os.path.exists(path) and open(path, encoding="utf-8").read() == text):
                atomic_write_text(path, text)
                made += 1
        if made:
            self.ran.append(f"links ({made} files)")

    def model_hash(self, path: str) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def check_dictionary(self, model_langs: Sequence[str]) -> None:
        """Say how the language tokens will get their ids (a note, not an error)."""
        with open(self.dictionary, encoding="utf-8") as f:
            symbols = {line.split(" ", 1)[0] for line in f}
        present = [lang for lang in model_langs if f"__{lang}__" in symbols]
        if present and len(present) < len(model_langs):
            print(f"warning: {self.dictionary} holds {len(present)} of {len(model_langs)} language tokens; "
                  f"fairseq appends the others in --lang-dict order", file=sys.stderr)

    def run(self) -> List[str]:
        os.makedirs(self.out, exist_ok=True)
        lock = open(os.path.join(self.out, ".lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataPrepError(f"--out {self.out}: another data preparation is running on this folder") from None
        shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of an interrupted run are never trusted
        model_langs = self.model_languages()
        self.check_dictionary(model_langs)
        cache: list = []
        for row in self.rows:
            self.step_raw(row)
            self.step_spm(row, cache)
        for row in self.rows:
            self.step_binarize(row)
        self.step_links(model_langs)
        shutil.rmtree(self.tmp, ignore_errors=True)
        lock.close()
        return self.ran


def run_preprocess(argv: List[str]) -> None:
    """fairseq-preprocess, in this process (one fairseq import for all languages)."""
    import logging

    from fairseq import options
    from fairseq_cli import preprocess

    args = options.get_preprocessing_parser().parse_args(argv)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        preprocess.main(args)
    finally:
        for h in list(root.handlers):  # preprocess.main adds a file handler in the temporary folder
            if h not in handlers:
                root.removeHandler(h)
                h.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--langs", required=True, help="language set TSV (model_code, flores_code, group)")
    p.add_argument("--flores-dir", required=True, help="the unpacked flores101_dataset folder (or its parent)")
    p.add_argument("--model-dir", default=None, help="the unpacked checkpoint folder (dict.txt, sentencepiece.bpe.model, language_pairs.txt)")
    p.add_argument("--spm-model", default=None, help="SentencePiece model (default: MODEL_DIR/sentencepiece.bpe.model)")
    p.add_argument("--dict", default=None, help="fairseq dictionary (default: MODEL_DIR/dict.txt)")
    p.add_argument("--language-pairs", default=None, help="the checkpoint's language_pairs.txt (default: MODEL_DIR/language_pairs.txt)")
    p.add_argument("--out", required=True, help="output folder; the fairseq data folder is OUT/bin")
    p.add_argument("--train-split", default="dev", help="FLORES split to train on (default: dev)")
    p.add_argument("--valid-split", default="dev", help="FLORES split to validate on (default: dev; held out of training when equal to --train-split)")
    p.add_argument("--valid-size", type=int, default=100,
                   help="sentences held out for validation: the last N of the train split when both splits are equal "
                        "(default: 100), else the first N of the valid split (0 = all)")
    p.add_argument("--test-split", default="devtest", help="FLORES split to test on (default: devtest)")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return run_tool("lslo_data_prep.prepare", lambda: prepare(a))


def prepare(a: argparse.Namespace) -> int:
    ran = Preparer(a).run()
    if ran:
        print(f"prepared {os.path.join(os.path.abspath(a.out), 'bin')}: ran {len(ran)} steps: {', '.join(ran)}")
    else:
        print(f"{os.path.join(os.path.abspath(a.out), 'bin')}: up to date, nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
