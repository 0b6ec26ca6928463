"""The bad-input matrix through the real fairseq-train: each mistake ends in a clear message,
and nothing already written (checkpoints, data) is touched."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN, CLI_DIMS, CLI_LSLO, CLI_TRAIN, ROOT, TASK, cli_env, run


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


# slow (a fairseq-train start-up); the same check in this process:
# test_data_check.test_missing_direction_names_the_files
@pytest.mark.slow
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


# slow (a fairseq-train start-up); the same check in this process:
# test_config_errors.test_lslo_checkpoint_with_other_configuration_is_rejected
@pytest.mark.slow
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
    assert f"{bad}: not a readable torch checkpoint (not a complete zip archive as torch.save writes" in out
    assert digest(data, save) == before
    assert not os.path.exists(os.path.join(fresh, "checkpoint_last.pt"))


# slow (a fairseq-train start-up); the same check in this process:
# test_config_errors.test_language_of_lang_pairs_missing_from_lslo_langs
@pytest.mark.slow
def test_language_missing_from_lslo_langs(copy_of):
    data, save = copy_of
    before = digest(data, save)
    out = train(data, save, "--lslo-langs", "en:high,fr:high", "--lslo-rank", "2")
    assert "language 'de' of --lang-pairs is not in --lslo-langs (en:high,fr:high); add it as de:GROUP" in out
    assert digest(data, save) == before


TOOLS = {
    "stats": [],
    "arch": [],
    "merge": ["--source-lang", "en", "--target-lang", "de", "-o", "{out}"],
    "export": ["-o", "{out}"],
}


#: one subprocess per tool (each starts fairseq: seconds; make test runs the first, make test-all
#: the others); every kind of bad file is covered for all tools in-process below, since they all
#: read checkpoints through load_checkpoint
TOOL_CASES = [("stats", "text")] + [pytest.param(tool, kind, marks=pytest.mark.slow) for tool, kind in
                                    (("arch", "truncated"), ("merge", "directory"), ("export", "truncated"))]


def bad_file(kind, trained, tmp_path):
    if kind == "text":
        path = tmp_path / "notes.pt"
        path.write_text("these are not weights\n")
    elif kind == "truncated":
        path = tmp_path / "cut.pt"
        with open(os.path.join(trained.lslo_dir, "checkpoint_last.pt"), "rb") as f:
            path.write_bytes(f.read()[:5000])
    else:
        path = tmp_path / "a_directory"
        path.mkdir()
    return path


@pytest.mark.parametrize("tool, kind", TOOL_CASES)
def test_lslo_tools_given_a_file_that_is_not_a_checkpoint(trained, tmp_path, tool, kind):
    path = bad_file(kind, trained, tmp_path)
    out = tmp_path / "out.file"
    out.write_bytes(b"precious")  # an existing output must survive a failed run
    args = [a.format(out=out) for a in TOOLS[tool]]
    proc = subprocess.run([sys.executable, "-m", f"fairseq_lslo.cli.{tool}", str(path), *args],
                          capture_output=True, text=True, cwd=ROOT, env=cli_env())
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert str(path) in message and ("not a readable torch checkpoint" in message or "directory" in message), message
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["text", "truncated", "directory"])
def test_every_kind_of_bad_file_is_a_checkpoint_error(trained, tmp_path, kind):
    from fairseq_lslo.checkpoint_io import CheckpointError, load_checkpoint

    path = bad_file(kind, trained, tmp_path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(str(path))
