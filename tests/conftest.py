"""Shared fixtures: tiny multilingual tasks and models built in-process with fairseq's own parsers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace
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
from fairseq_lslo.testing.dicts import write_dicts, write_tiny_binarized  # noqa: E402,F401

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


# --- real CLI runs (fairseq-preprocess / fairseq-train), shared by the CLI-level tests -----
BIN = os.path.dirname(sys.executable)
TASK = ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
            "--encoder-langtok", "src", "--decoder-langtok"]
CLI_DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
            "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
            "--decoder-attention-heads", "2", "--share-all-embeddings"]
CLI_TRAIN = ["--cpu", "--optimizer", "adam", "--max-tokens", "500", "--sampling-method", "temperature",
             "--sampling-temperature", "5", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
             "--seed", "1", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "5", "--num-workers", "0"]
CLI_LSLO = ["--user-dir", os.path.join(ROOT, "fairseq_lslo"), "--arch", "lslo_transformer",
            "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4",
            "--lslo-encoder-routing", "src*1,tgt*1", "--lslo-decoder-routing", "tgt*2"]


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(cmd, expect_ok: bool = True, **kw) -> str:
    """Run a CLI; return stdout+stderr; fail with its output if the exit status is unexpected."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT, **kw)
    if (proc.returncode == 0) != expect_ok:
        raise AssertionError(f"{cmd[0]} exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def valid_losses(log: str) -> List[float]:
    return [float(x) for x in re.findall(r"\| valid on 'valid' subset \| loss ([\d.]+)", log)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Tiny data, a plain transformer base, and an LSLo fine-tuning run from it (real CLIs)."""
    from fairseq_lslo.testing.tinydata import bin_dir_for

    root = str(tmp_path_factory.mktemp("e2e"))
    data = bin_dir_for(root, LANGS, PAIRS)
    base_dir, lslo_dir = os.path.join(root, "base"), os.path.join(root, "lslo")
    run([os.path.join(BIN, "fairseq-train"), data, *TASK, "--arch", "transformer", *CLI_DIMS, *CLI_TRAIN,
         "--lr", "0.005", "--max-update", "60", "--save-dir", base_dir])
    log = run([os.path.join(BIN, "fairseq-train"), data, *TASK, *CLI_LSLO, *CLI_DIMS, *CLI_TRAIN,
               "--lr", "0.01", "--max-update", "60",
               "--finetune-from-model", os.path.join(base_dir, "checkpoint_best.pt"), "--save-dir", lslo_dir])
    return SimpleNamespace(root=root, data=data, base_dir=base_dir, lslo_dir=lslo_dir, log=log)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The shared tiny real run (fairseq_lslo/testing/tiny_run.py): raw text, SPM, data, base and LSLo checkpoints."""
    from fairseq_lslo.testing.tiny_run import build_tiny_run

    return build_tiny_run(str(tmp_path_factory.mktemp("tiny_run")))
