"""lslo_data_prep.prepare: idempotent reruns, crash safety, per-direction links, clear errors."""
import hashlib
import os
import subprocess
import sys

import pytest

import flores_fixture
from lslo_data_prep import download

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
LANGS3 = "en\teng\thigh\nfr\tfra\thigh\nwo\twol\tlow\n"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpacked")
    arch = flores_fixture.archives()
    flores = download.obtain("flores", str(root), archive=arch["flores"])
    model = download.obtain("model", str(root), archive=arch["model"])
    tsv = root / "langs3.tsv"
    tsv.write_text(LANGS3)
    return {"flores": flores, "model": model, "langs": str(tsv)}


def prepare(u, out, *extra, env=None):
    cmd = [sys.executable, "-m", "lslo_data_prep.prepare", "--langs", u["langs"], "--flores-dir", u["flores"],
           "--model-dir", u["model"], "--out", str(out), "--valid-size", "8", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=120)


def snapshot(out):
    """relative path -> (sha256 of content, mtime_ns) for every file, following links."""
    files = {}
    for d, _, names in os.walk(out):
        for n in names:
            p = os.path.join(d, n)
            if n == ".lock":
                continue
            files[os.path.relpath(p, out)] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, unpacked):
    """One uninterrupted run: its folder, output, and the content hashes right after it."""
    out = tmp_path_factory.mktemp("clean") / "prep"
    r = prepare(unpacked, out)
    assert r.returncode == 0, r.stderr
    return out, r, {k: v[0] for k, v in snapshot(out).items()}


def test_layout_and_rerun_does_nothing(unpacked, clean_run):
    out, r, _ = clean_run
    data = out / "bin"
    for pair in ("en-fr", "fr-en", "en-wo", "wo-fr"):
        for split in ("train", "valid", "test"):
            for lang in pair.split("-"):
                for ext in ("bin", "idx"):
                    f = data / f"{split}.{pair}.{lang}.{ext}"
                    # multi-way parallel: every direction shares the language's one binarized file
                    assert os.path.samefile(f, out / "lang" / f"{split}.{lang}.{ext}")
    assert (data / "lang_pairs.txt").read_text().strip() == "en-fr,en-wo,fr-en,fr-wo,wo-en,wo-fr"
    langs = (data / "lang_dict.txt").read_text().split()
    assert langs == sorted(langs) and {"af", "zu", "en", "wo"} <= set(langs)  # the checkpoint's list, not ours
    assert os.path.samefile(data / "dict.wo.txt", data / "dict.txt")
    assert len((out / "raw" / "train.en").read_text().splitlines()) == 32  # dev (40) minus 8 held out
    assert len((out / "raw" / "valid.en").read_text().splitlines()) == 8
    assert (out / "raw" / "valid.fr").read_text().splitlines()[-1].startswith("Fr")
    assert "▁" in (out / "spm" / "test.wo").read_text()
    assert r.stdout.count("binarize.") == 3  # once per language, not per direction

    before = snapshot(out)
    r = prepare(unpacked, out)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout
    assert snapshot(out) == before  # no file rewritten (content and mtime)

    r = prepare(unpacked, out, "--valid-size", "5")  # a changed split redoes the steps that depend on it
    assert r.returncode == 0, r.stderr
    assert "raw.en" in r.stdout and "binarize.wo" in r.stdout
    assert len((out / "raw" / "valid.en").read_text().splitlines()) == 5


def test_killed_run_then_rerun_equals_clean_run(tmp_path, unpacked, clean_run):
    crashed = tmp_path / "crashed"
    r = prepare(unpacked, crashed, env={**ENV, "DATA_PREP_CRASH_AT": "binarize:fr"})
    assert r.returncode == -9  # SIGKILL in the middle of moving fr's binarized files into place
    assert (crashed / "lang" / "train.fr.bin").exists()  # a half-finished step ...
    assert not (crashed / ".stamps" / "binarize.fr.json").exists()  # ... that no stamp vouches for
    assert (crashed / ".stamps" / "binarize.en.json").exists()
    r = prepare(unpacked, crashed)
    assert r.returncode == 0, r.stderr
    assert "binarize.en" not in r.stdout and "binarize.fr" in r.stdout and "binarize.wo" in r.stdout
    assert not (crashed / ".tmp").exists()
    b = {k: v[0] for k, v in snapshot(crashed).items()}
    assert b == clean_run[2]
    assert os.path.samefile(crashed / "bin" / "test.en-fr.fr.bin", crashed / "lang" / "test.fr.bin")


def test_bad_inputs_name_the_problem(tmp_path, unpacked):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("en\teng\thigh\nxx\txxx\tlow\n")
    r = prepare({**unpacked, "langs": str(tsv)}, tmp_path / "o0")
    assert r.returncode == 2 and "'xx' is not supported by the checkpoint" in r.stderr
    tsv.write_text("en\teng\thigh\naf\tafr\tlow\n")  # the checkpoint knows af; the fixture has no afr file
    r = prepare({**unpacked, "langs": str(tsv)}, tmp_path / "o1")
    assert r.returncode == 2 and "afr.dev" in r.stderr and "--flores-dir" in r.stderr
    tsv.write_text("en\teng\thigh\nfr\tfra\n")
    r = prepare({**unpacked, "langs": str(tsv)}, tmp_path / "o2")
    assert r.returncode == 2 and "bad.tsv:2" in r.stderr
    r = prepare(unpacked, tmp_path / "o3", "--valid-size", "40")
    assert r.returncode == 2 and "--valid-size" in r.stderr
