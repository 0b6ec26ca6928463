"""Shared fixtures: tiny multilingual tasks and models built in-process with fairseq's own parsers."""
from __future__ import annotations

import os
import sys
from typing import List, Sequence

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from fairseq import options, tasks  # noqa: E402

import fairseq_lslo  # noqa: E402,F401  (registers the plugin)

LANGS = ["en", "fr", "de"]
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]
TINY_DIMS = [
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.0",
]
LSLO_FLAGS = ["--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4"]


def write_dicts(path: str, langs: Sequence[str] = LANGS, n_words: int = 30) -> str:
    os.makedirs(path, exist_ok=True)
    for lang in langs:
        with open(os.path.join(path, f"dict.{lang}.txt"), "w") as f:
            for i in range(n_words):
                f.write(f"w{i} {100 - i}\n")
    return path


def parse(data: str, arch: str, extra: Sequence[str] = (), pairs: Sequence[str] = PAIRS, langtoks: bool = True):
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs), "--arch", arch,
            "--seed", "1", "--cpu", *TINY_DIMS]
    if langtoks:
        argv += ["--encoder-langtok", "src", "--decoder-langtok"]
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, list(argv) + list(extra))


def build(data: str, arch: str, extra: Sequence[str] = (), **kw):
    """(task, model) in eval mode, seeded."""
    args = parse(data, arch, extra, **kw)
    torch.manual_seed(1)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    model.eval()
    return task, model


@pytest.fixture(scope="session")
def dict_dir(tmp_path_factory) -> str:
    return write_dicts(str(tmp_path_factory.mktemp("dicts")))


def lang_tok(task, lang: str) -> int:
    return task.source_dictionary.index(f"__{lang}__")


def make_batch(task, directions: List[str], lengths: List[int], tgt_lengths: List[int], seed: int = 0):
    """A mixed-direction batch laid out as translation_multi_simple_epoch does it.

    source: ``__src__ w... </s>`` left-padded; prev_output_tokens: ``</s> __tgt__ w...`` right-padded.
    """
    d = task.source_dictionary
    g = torch.Generator().manual_seed(seed)
    words = [i for i in range(d.nspecial, len(d)) if not d[i].startswith("__")]
    srcs, prevs, tgts = [], [], []
    for direction, n, m in zip(directions, lengths, tgt_lengths):
        s, t = direction.split("-")
        body = [words[int(i)] for i in torch.randint(len(words), (n,), generator=g)]
        tbody = [words[int(i)] for i in torch.randint(len(words), (m,), generator=g)]
        srcs.append([lang_tok(task, s)] + body + [d.eos()])
        tgts.append([lang_tok(task, t)] + tbody + [d.eos()])
        prevs.append([d.eos(), lang_tok(task, t)] + tbody)
    S, T = max(map(len, srcs)), max(map(len, prevs))
    src_tokens = torch.full((len(srcs), S), d.pad(), dtype=torch.long)
    prev = torch.full((len(srcs), T), d.pad(), dtype=torch.long)
    target = torch.full((len(srcs), T), d.pad(), dtype=torch.long)
    for i, (s, p, t) in enumerate(zip(srcs, prevs, tgts)):
        src_tokens[i, S - len(s):] = torch.tensor(s)
        prev[i, : len(p)] = torch.tensor(p)
        target[i, : len(t)] = torch.tensor(t)
    src_lengths = torch.tensor([len(s) for s in srcs])
    return {"src_tokens": src_tokens, "src_lengths": src_lengths, "prev_output_tokens": prev}, target


def randomize_adapters(model, seed: int = 0, scale: float = 0.5) -> None:
    """Give every adapter non-zero B (and fresh A) so that languages behave differently."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
