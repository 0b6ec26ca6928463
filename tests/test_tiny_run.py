"""The shared tiny run: its files exist, a second build reuses them, and its env names them."""
import os

import torch

from fairseq_lslo.testing.tiny_run import build_tiny_run


def test_tiny_run_files_and_env(tiny_run):
    env = tiny_run.env()
    assert set(env) == {"USER_DIR", "DATA", "SPM", "RAW", "BASE", "CKPT", "PAIRS", "TINY_ARCH"}
    for pair in env["PAIRS"].split(","):
        src, tgt = pair.split("-")
        for split in ("train", "valid", "test"):
            for lang in (src, tgt):
                assert os.path.getsize(os.path.join(env["DATA"], f"{split}.{pair}.{lang}.bin")) > 0
    for lang in tiny_run.langs:
        assert os.path.isfile(os.path.join(env["DATA"], f"dict.{lang}.txt"))
        assert os.path.isfile(os.path.join(env["RAW"], f"test.{lang}"))
    base = torch.load(env["BASE"], weights_only=True)
    lslo = torch.load(env["CKPT"], weights_only=True)
    assert base["cfg"]["model"].arch == "transformer"  # fairseq stores the model section as a Namespace
    assert "lslo_config" in lslo["model"] and "lslo_config" not in base["model"]
    assert "--encoder-layers" in env["TINY_ARCH"]
    for name in ("dict.txt", "sentencepiece.bpe.model", "language_pairs.txt"):
        assert os.path.isfile(os.path.join(os.path.dirname(env["CKPT"]), name))


def test_second_build_reuses_the_files(tiny_run):
    before = os.stat(tiny_run.ckpt).st_mtime_ns
    again = build_tiny_run(tiny_run.root)
    assert again == tiny_run
    assert os.stat(tiny_run.ckpt).st_mtime_ns == before
