"""In-process tiny multilingual models and hand-made batches for the search/criterion tests."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_lslo")
LANGS = ("en", "fr", "de")
GROUPS = {"en": "high", "fr": "high", "de": "low"}
PAIRS = "en-fr,fr-en,en-de,de-en,fr-de,de-fr"
WORDS = [f"{lang}{i}" for lang in LANGS for i in range(6)]

TINY = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings", "--dropout", "0.0"]


def make_dict_dir(root: str) -> str:
    """dict.{lang}.txt files and a few binarized sentences: enough for the multilingual task."""
    from fairseq_lslo.testing.dicts import write_tiny_binarized

    os.makedirs(root, exist_ok=True)
    for lang in LANGS:
        with open(os.path.join(root, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{w} 1\n" for w in WORDS))
    write_tiny_binarized(root, PAIRS.split(","))
    return root


def parse(data: str, extra: Sequence[str], arch: str = "lslo_transformer"):
    from fairseq import options

    argv = [data, "--user-dir", USER_DIR, "--task", "translation_multi_simple_epoch", "--lang-pairs", PAIRS,
            "--encoder-langtok", "src", "--decoder-langtok", "--arch", arch, "--cpu", *TINY, *extra]
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, argv)


def build(data: str, extra: Sequence[str], arch: str = "lslo_transformer", seed: int = 0):
    """(args, task, model) for the given flags; the model's weights are fixed by ``seed``."""
    from fairseq import tasks

    args = parse(data, extra, arch)
    task = tasks.setup_task(args)
    torch.manual_seed(seed)
    model = task.build_model(args)
    return args, task, model


def lslo_flags(encoder_routing: str, decoder_routing: str, positions: str = "fc1,fc2") -> List[str]:
    return ["--lslo-langs", ",".join(f"{c}:{g}" for c, g in GROUPS.items()), "--lslo-rank", "high:2,low:3",
            "--lslo-encoder-routing", encoder_routing, "--lslo-decoder-routing", decoder_routing,
            "--lslo-encoder-positions", positions, "--lslo-decoder-positions", positions]


def randomize_adapters(model, seed: int = 1) -> None:
    """Give every adapter factor (B is zero at init) random values, so adapters change outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lslo_" in name and not name.endswith("lslo_mix"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def make_sample(task, directions: Sequence[Tuple[str, str]], seed: int = 0) -> Dict:
    """A mixed-direction batch laid out as translation_multi_simple_epoch does it.

    Source: ``__src__ w.. </s>`` left-padded; target: ``__tgt__ w.. </s>``; prev_output_tokens:
    ``</s> __tgt__ w..``, both right-padded.
    """
    d = task.source_dictionary
    g = torch.Generator().manual_seed(seed)
    pad, eos = d.pad(), d.eos()
    srcs, tgts = [], []
    for i, (s, t) in enumerate(directions):
        n_src, n_tgt = 2 + (i % 3), 1 + ((i + 1) % 4)
        srcs.append([d.index(f"__{s}__")] + [d.index(f"{s}{int(x)}") for x in torch.randint(0, 6, (n_src,), generator=g)] + [eos])
        tgts.append([d.index(f"__{t}__")] + [d.index(f"{t}{int(x)}") for x in torch.randint(0, 6, (n_tgt,), generator=g)] + [eos])
    bsz, s_len, t_len = len(directions), max(map(len, srcs)), max(map(len, tgts))
    src_tokens = torch.full((bsz, s_len), pad, dtype=torch.long)
    target = torch.full((bsz, t_len), pad, dtype=torch.long)
    prev = torch.full((bsz, t_len), pad, dtype=torch.long)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src_tokens[i, s_len - len(s):] = torch.tensor(s)
        target[i, : len(t)] = torch.tensor(t)
        prev[i, : len(t)] = torch.tensor([eos] + t[:-1])
    return {
        "id": torch.arange(bsz),
        "nsentences": bsz,
        "ntokens": int(target.ne(pad).sum()),
        "net_input": {"src_tokens": src_tokens, "src_lengths": torch.tensor([len(s) for s in srcs]),
                      "prev_output_tokens": prev},
        "target": target,
    }


def binarized_corpus(root: str, langs: Sequence[str], pairs: Sequence[str]) -> str:
    """testing.corpus's corpus, binarized in this process (no fairseq-preprocess start-ups): the data dir.

    Same layout as ``testing.tinydata.bin_dir_for``: ``{split}.{src}-{tgt}.{lang}.{bin,idx}`` links to one
    binarized file per language and split, and ``dict.{lang}.txt``.
    """
    import shutil

    from fairseq.data import Dictionary, indexed_dataset

    from fairseq_lslo.testing.corpus import make_corpus
    from fairseq_lslo.testing.tinydata import write_dictionary

    corpus = make_corpus(langs)
    data, per_lang = os.path.join(root, "bin"), os.path.join(root, "per-lang")
    os.makedirs(data, exist_ok=True)
    os.makedirs(per_lang, exist_ok=True)
    dict_path = os.path.join(root, "dict.txt")
    write_dictionary(dict_path, corpus)
    dictionary = Dictionary.load(dict_path)
    for lang in langs:
        shutil.copy(dict_path, os.path.join(data, f"dict.{lang}.txt"))
    for split, sentences in corpus.items():
        for lang in langs:
            prefix = os.path.join(per_lang, f"{split}.{lang}")
            builder = indexed_dataset.make_builder(prefix + ".bin", "mmap", vocab_size=len(dictionary))
            for line in sentences[lang]:
                builder.add_item(dictionary.encode_line(line, add_if_not_exist=False))
            builder.finalize(prefix + ".idx")
            for pair in pairs:
                s, t = pair.split("-")
                if lang in (s, t):
                    for ext in ("bin", "idx"):
                        os.link(f"{prefix}.{ext}", os.path.join(data, f"{split}.{s}-{t}.{lang}.{ext}"))
    return data
