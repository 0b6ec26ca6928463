"""Tiny stand-ins for the FLORES-101 archives, in the real layouts.

* dataset: ``flores101_dataset/{dev,devtest}/{flores_code}.{split}``, multi-way parallel
  synthetic sentences (``fairseq_lslo/testing/corpus.py`` renders shared concepts per language);
* checkpoint: ``flores101_mm100_615M/{model.pt, dict.txt, sentencepiece.bpe.model,
  language_pairs.txt}`` with a SentencePiece model trained here on the fixture text, its
  vocabulary as fairseq dictionary, and a tiny pre-norm transformer built by fairseq itself
  for the checkpoint's language list (two extra languages shift the ``__xx__`` token ids, so
  a recipe that forgets ``--lang-dict`` fails to load it).
"""
from __future__ import annotations

import os
import random
import tarfile
from typing import Dict, List, Sequence, Tuple

from fairseq_lslo.testing.corpus import make_corpus

LANG12 = [("en", "eng"), ("fr", "fra"), ("it", "ita"), ("de", "deu"), ("nl", "nld"), ("zh", "zho_simpl"),
          ("ja", "jpn"), ("ko", "kor"), ("oc", "oci"), ("or", "ory"), ("sd", "snd"), ("wo", "wol")]
EXTRA_MODEL_LANGS = ("af", "zu")
TINY_DIMS = {"ENCODER_LAYERS": "2", "DECODER_LAYERS": "2", "EMBED_DIM": "32", "FFN_DIM": "64", "HEADS": "2"}


def dims_flags(dims: Dict[str, str] = TINY_DIMS) -> List[str]:
    """The same architecture flags recipes/train.sh passes."""
    return ["--encoder-layers", dims["ENCODER_LAYERS"], "--decoder-layers", dims["DECODER_LAYERS"],
            "--encoder-embed-dim", dims["EMBED_DIM"], "--decoder-embed-dim", dims["EMBED_DIM"],
            "--encoder-ffn-embed-dim", dims["FFN_DIM"], "--decoder-ffn-embed-dim", dims["FFN_DIM"],
            "--encoder-attention-heads", dims["HEADS"], "--decoder-attention-heads", dims["HEADS"],
            "--encoder-normalize-before", "--decoder-normalize-before", "--share-all-embeddings"]


def flores_archive(root: str, langs: Sequence[Tuple[str, str]] = LANG12, dev: int = 40, devtest: int = 8,
                   seed: int = 3) -> str:
    corpus = make_corpus([c for c, _ in langs], n_concepts=10, seed=seed, splits={"dev": dev, "devtest": devtest})
    base = os.path.join(root, "flores_src", "flores101_dataset")
    for split, per_lang in corpus.items():
        os.makedirs(os.path.join(base, split), exist_ok=True)
        for code, flores in langs:
            with open(os.path.join(base, split, f"{flores}.{split}"), "w", encoding="utf-8") as f:
                f.write("\n".join(s.capitalize() + "." for s in per_lang[code]) + "\n")
    archive = os.path.join(root, "flores101_dataset.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="flores101_dataset")
    return archive


def model_archive(root: str, flores_archive_path: str, langs: Sequence[Tuple[str, str]] = LANG12,
                  dims: Dict[str, str] = TINY_DIMS) -> str:
    import sentencepiece as spm

    base = os.path.join(root, "model_src", "flores101_mm100_615M")
    os.makedirs(base, exist_ok=True)
    text = os.path.join(root, "model_src", "spm_train.txt")
    with tarfile.open(flores_archive_path) as tar, open(text, "w", encoding="utf-8") as out:
        for m in tar.getmembers():
            if m.isfile() and "/dev/" in m.name:
                out.write(tar.extractfile(m).read().decode("utf-8"))
    spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(base, "sentencepiece.bpe"), vocab_size=120,
                                   model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(base, "sentencepiece.bpe.model"))
    with open(os.path.join(base, "dict.txt"), "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_unknown(i) or sp.is_control(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    codes = sorted({c for c, _ in langs} | set(EXTRA_MODEL_LANGS))
    pairs = [f"{a}-{b}" for a in codes for b in codes if a != b]
    with open(os.path.join(base, "language_pairs.txt"), "w", encoding="utf-8") as f:
        f.write(",".join(pairs) + "\n")
    build_checkpoint(os.path.join(base, "model.pt"), os.path.join(base, "dict.txt"), codes, dims)
    archive = os.path.join(root, "flores101_mm100_615M.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="flores101_mm100_615M")
    return archive


_CACHE: Dict[str, str] = {}


def archives() -> Dict[str, str]:
    """Both fixture archives, built once per test session in a temporary folder."""
    if not _CACHE:
        import atexit
        import shutil
        import tempfile

        root = tempfile.mkdtemp(prefix="flores-fixture-")
        atexit.register(shutil.rmtree, root, True)
        _CACHE["flores"] = flores_archive(root)
        _CACHE["model"] = model_archive(root, _CACHE["flores"])
    return dict(_CACHE)


def build_checkpoint(path: str, dictionary: str, codes: Sequence[str], dims: Dict[str, str]) -> None:
    """A randomly initialised plain ``transformer`` for dict + sorted language tokens, saved like fairseq does."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    data = os.path.join(os.path.dirname(path), "..", "dicts")
    os.makedirs(data, exist_ok=True)
    for code in codes:
        with open(dictionary, encoding="utf-8") as src, open(os.path.join(data, f"dict.{code}.txt"), "w", encoding="utf-8") as dst:
            dst.write(src.read())
    pairs = ",".join(f"{a}-{b}" for a in codes for b in codes if a != b)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data, "--task", "translation_multi_simple_epoch", "--lang-pairs", pairs, "--encoder-langtok", "src",
        "--decoder-langtok", "--arch", "transformer", "--cpu", *dims_flags(dims)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    random.seed(0)
    model = task.build_model(cfg.model)
    state = {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "last_optimizer_state": None,
             "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "Adam",
                                    "lr_scheduler_state": {"best": None}, "num_updates": 0}],
             "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}}}
    torch.save(state, path)
