"""Atomic writers leave files with the mode a plain open() would give (mkstemp alone makes 0600)."""
import os
import stat

from lslo_data_prep.fsutil import atomic_write_text
from fairseq_lslo.checkpoint_io import atomic_write


def _expected_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_atomic_write_gives_the_usual_mode(tmp_path):
    path = tmp_path / "merged.pt"
    atomic_write(str(path), lambda f: f.write(b"x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == _expected_mode()
    assert path.read_bytes() == b"x"


def test_atomic_write_text_gives_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "scores.tsv"
        atomic_write_text(str(path), "a\tb\n")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        os.umask(old)
