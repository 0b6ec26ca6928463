"""Atomic writers leave files with the mode a plain open() would give (mkstemp alone makes 0600)."""
import os
import stat

from lslo_common.atomic import atomic_copy, atomic_write, atomic_write_text


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


def test_atomic_copy_and_a_failed_write_keeps_the_old_file(tmp_path):
    src, dst = tmp_path / "src.bin", tmp_path / "out" / "dst.bin"
    src.write_bytes(b"new" * 1000)
    atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == b"new" * 1000 and stat.S_IMODE(os.stat(dst).st_mode) == _expected_mode()

    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    try:
        atomic_write(str(dst), fail)
    except OSError:
        pass
    assert dst.read_bytes() == b"new" * 1000  # the old content, whole
    assert os.listdir(dst.parent) == ["dst.bin"]  # no temporary file left behind
