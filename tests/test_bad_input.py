"""The bad-input matrix through the real fairseq-train: each mistake ends in a clear message,
and nothing already written (checkpoints, data) is touched."""
import hashlib
import os
import shutil

import pytest

from conftest import BIN, CLI_DIMS, CLI_LSLO, CLI_TRAIN, TASK, run


def digest(*dirs) -> dict:
    out = {}
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                path = os.path.join(root, f)
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def copy_of(trained, tmp_path):
    """A private copy of the data and of the LSLo run's save dir (the shared run stays intact)."""
    data, save = str(tmp_path / "bin"), str(tmp_path / "save")
    shutil.copytree(trained.data, data)
    shutil.copytree(trained.lslo_dir, save)
    return data, save


def train(data, save, *extra):
    return run([os.path.join(BIN, "fairseq-train"), data, *TASK, *CLI_LSLO, *CLI_DIMS, *CLI_TRAIN,
                "--lr", "0.01", "--max-update", "70", "--save-dir", save, *extra], expect_ok=False)


def test_truncated_binarized_data(copy_of):
    data, save = copy_of
    victim = os.path.join(data, "train.fr-de.de.bin")
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size - 7)
    before = digest(data, save)
    out = train(data, save)
    assert f"train.fr-de.de.bin: {size - 7} bytes, but its index describes {size}: the file is truncated" in out
    assert digest(data, save) == before


def test_missing_binarized_data(copy_of):
    data, save = copy_of
    # fairseq reads valid.en-de.de for de-en too (and the reverse): remove both
    for pair in ("de-en", "en-de"):
        for ext in ("idx", "bin"):
            os.unlink(os.path.join(data, f"valid.{pair}.de.{ext}"))
    before = digest(data, save)
    out = train(data, save)
    assert "no binarized valid data for en-de (de side): expected valid.en-de.de.idx and .bin" in out
    assert digest(data, save) == before


def test_resume_with_other_lslo_configuration(copy_of):
    data, save = copy_of
    before = digest(data, save)
    out = train(data, save, "--lslo-rank", "high:2,low:8")
    assert "the checkpoint's LSLo configuration differs from the command line" in out
    assert "ranks: [2, 2, 8] vs [2, 2, 4]" in out
    assert digest(data, save) == before


def test_truncated_checkpoint(copy_of, tmp_path):
    data, save = copy_of
    good = os.path.join(save, "checkpoint_last.pt")
    bad = str(tmp_path / "truncated.pt")
    with open(good, "rb") as f:
        blob = f.read()
    with open(bad, "wb") as f:
        f.write(blob[: len(blob) // 3])
    fresh = str(tmp_path / "fresh")
    before = digest(data, save)
    out = train(data, fresh, "--finetune-from-model", bad)
    assert f"{bad}: not a readable torch checkpoint (truncated, corrupt, or not a checkpoint)" in out
    assert digest(data, save) == before
    assert not os.path.exists(os.path.join(fresh, "checkpoint_last.pt"))


def test_language_missing_from_lslo_langs(copy_of):
    data, save = copy_of
    before = digest(data, save)
    out = train(data, save, "--lslo-langs", "en:high,fr:high", "--lslo-rank", "2")
    assert "language 'de' of --lang-pairs is not in --lslo-langs (en:high,fr:high); add it as de:GROUP" in out
    assert digest(data, save) == before
