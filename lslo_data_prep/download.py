"""Fetch and unpack the FLORES-101 dataset or the FLORES-101 M2M checkpoint archive.

    python -m lslo_data_prep.download flores --dest DIR            # -> DIR/flores101_dataset/
    python -m lslo_data_prep.download model --size 615M --dest DIR # -> DIR/flores101_mm100_615M/

Downloads resume from ``NAME.part`` with HTTP Range requests and show a progress bar.
``--archive FILE`` (or ``FLORES_ARCHIVE`` / ``MODEL_ARCHIVE``) takes a local archive instead,
for compute nodes without internet.  Integrity: a known size/sha256 (``archives.json`` or
``--sha256``) is enforced; otherwise the archive must be a complete gzip tar (every member is
read through, so gzip's CRC is checked) holding the expected files, and the sha256 of that
first verified copy is recorded in ``ARCHIVE.sha256`` and enforced from then on.  The archive
is unpacked into a temporary folder that is renamed into place, then a stamp is written.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import gzip
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from typing import Dict, List, Optional

from lslo_common.atomic import atomic_write_text
from lslo_common.runner import run_tool

from .fsutil import sha256_file
from .langsets import DataPrepError

HERE = os.path.dirname(os.path.abspath(__file__))
STAMP = ".data_prep_complete"


def load_catalog() -> Dict[str, dict]:
    with open(os.path.join(HERE, "archives.json"), encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


class Progress:
    """A one-line progress bar on stderr (a line every 10% when stderr is not a terminal)."""

    def __init__(self, name: str, total: Optional[int], start: int = 0):
        self.name, self.total, self.done = name, total, start
        self.t0, self.start, self.last, self.last_decile = time.time(), start, 0.0, -1
        self.tty = sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        decile = int(10 * self.done / self.total) if self.total else -1
        if (self.tty and now - self.last > 0.2) or (not self.tty and decile > self.last_decile):
            self.last, self.last_decile = now, decile
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = (self.done - self.start) / max(now - self.t0, 1e-6) / 2**20
        mib = self.done / 2**20
        if self.total:
            pct = 100.0 * self.done / self.total
            width = 30
            bar = "#" * int(width * self.done / self.total)
            text = f"{self.name} [{bar:<{width}}] {pct:5.1f}% {mib:.1f}/{self.total / 2**20:.1f} MiB {rate:.1f} MiB/s"
        else:
            text = f"{self.name} {mib:.1f} MiB {rate:.1f} MiB/s"
        sys.stderr.write(("\r" if self.tty else "") + text + ("" if self.tty else "\n") + end)
        sys.stderr.flush()

    def close(self) -> None:
        self._draw(time.time(), end="\n" if self.tty else "")


def fetch(url: str, dest: str, retries: int = 5, timeout: float = 60.0, chunk: int = 1 << 20, backoff: float = 2.0) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it; returns ``dest``."""
    part = dest + ".part"
    attempt = 0
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"User-Agent": "fairseq-lslo-data-prep"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                length = response.headers.get("Content-Length")
                if status == 206:
                    content_range = response.headers.get("Content-Range", "")
                    first = int(content_range.split()[1].split("-")[0]) if content_range.startswith("bytes") else -1
                    if first != have:
                        raise DataPrepError(f"{url}: server resumed at byte {first}, expected {have}")
                    total = int(content_range.rsplit("/", 1)[1]) if "/" in content_range and not content_range.endswith("*") else None
                    mode = "ab"
                    if have:
                        print(f"resuming {os.path.basename(dest)} at {have} bytes", file=sys.stderr)
                else:
                    if have:
                        print(f"{url}: server ignored the Range request; downloading from the start", file=sys.stderr)
                    have, mode = 0, "wb"
                    total = int(length) if length is not None else None
                bar = Progress(os.path.basename(dest), total, have)
                with open(part, mode) as f:
                    for block in iter(lambda: response.read(chunk), b""):
                        f.write(block)
                        bar.update(len(block))
                bar.close()
            size = os.path.getsize(part)
            if total is not None and size != total:
                raise ConnectionError(f"connection closed at {size} of {total} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                # The part file already holds everything (or more): let the integrity check judge it.
                os.replace(part, dest)
                return dest
            raise DataPrepError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            attempt += 1
            if attempt > retries:
                raise DataPrepError(
                    f"download of {url} failed after {retries} retries ({e}); the partial file {part} is kept "
                    f"and a rerun resumes it.  Offline? Download the archive elsewhere and pass it with "
                    f"FLORES_ARCHIVE=... / MODEL_ARCHIVE=... (or --archive)"
                ) from None
            wait = min(backoff ** attempt, 30) if backoff else 0
            print(f"download interrupted ({e}); retry {attempt}/{retries} in {wait}s", file=sys.stderr)
            time.sleep(wait)


def find_root(names: List[str], required: List[str], archive: str) -> str:
    """The folder inside the archive that holds every required file (e.g. ``flores101_dataset``)."""
    files = {n.lstrip("./") for n in names}
    candidates = sorted({n[: -len(required[0])] for n in files if n.endswith(required[0]) and
                         (n == required[0] or n.endswith("/" + required[0]))}, key=len)
    for prefix in candidates:
        if all(prefix + r in files for r in required):
            return prefix.rstrip("/")
    raise DataPrepError(
        f"{archive}: not the expected archive: no folder with {', '.join(required)} "
        f"(it holds {len(files)} entries, e.g. {sorted(files)[:3]})"
    )


def verify(archive: str, entry: dict, sha256: Optional[str]) -> str:
    """Check size/sha256 and tar validity; returns the member folder holding the required files."""
    if not os.path.isfile(archive):
        raise DataPrepError(f"archive {archive!r} does not exist")
    size = os.path.getsize(archive)
    if entry.get("size") and size != entry["size"]:
        raise DataPrepError(f"{archive}: size {size} bytes, expected {entry['size']}: incomplete or corrupted")
    recorded = archive + ".sha256"
    expected = sha256 or entry.get("sha256")
    if not expected and os.path.exists(recorded):
        expected = open(recorded, encoding="utf-8").read().split()[0]
    actual = sha256_file(archive)
    if expected and actual != expected:
        raise DataPrepError(f"{archive}: sha256 {actual} does not match the expected {expected}: corrupted or a different file")
    try:
        names = []
        with open(archive, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        # one streaming pass: every member is read, then the rest of the gzip stream, whose
        # trailer (CRC32 and length) gzip checks only at EOF -- tar's end blocks come before it
        with (gzip.open(archive, "rb") if gzipped else open(archive, "rb")) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    names.append(member.name)
                    if member.isfile():
                        reader = tar.extractfile(member)
                        while reader.read(1 << 20):
                            pass
            while stream.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataPrepError(f"{archive}: corrupted or truncated archive ({e})") from None
    root = find_root(names, entry["required"], archive)
    if not os.path.exists(recorded):
        try:
            atomic_write_text(recorded, f"{actual}  {os.path.basename(archive)}\n")
        except OSError:
            pass  # a read-only local archive: nothing to record
    return root


def safe_extract(archive: str, root: str, target: str) -> None:
    """Unpack ``root`` of ``archive`` into ``target`` via a temporary folder renamed at the end."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".extract-{os.path.basename(target)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for m in tar.getmembers():
            name = os.path.normpath(m.name.lstrip("./"))
            if name.startswith("..") or os.path.isabs(m.name) or not (m.isfile() or m.isdir()):
                continue  # never write outside the folder; skip links and devices
            members.append(m)
        tar.extractall(tmp, members=members, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp, members=members)
    src = os.path.join(tmp, root) if root else tmp
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(src, target)
    shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(os.path.join(target, STAMP), os.path.basename(archive) + "\n")


def obtain(kind: str, dest: str, size: str = "615M", archive: Optional[str] = None, url: Optional[str] = None,
           sha256: Optional[str] = None, force: bool = False) -> str:
    """Make sure the unpacked folder exists; returns its path."""
    catalog = load_catalog()
    key = "flores" if kind == "flores" else f"model_{size}"
    if key not in catalog:
        raise DataPrepError(f"--size: unknown model size {size!r}; known: 615M, 175M")
    entry = catalog[key]
    url = url or entry["url"]
    base = os.path.basename(url)
    target = os.path.join(dest, "flores101_dataset" if kind == "flores" else f"flores101_mm100_{size}")
    if os.path.exists(os.path.join(target, STAMP)) and not force:
        print(f"{target}: already unpacked, nothing to do", file=sys.stderr)
        return target
    if archive:
        archive = os.path.abspath(archive)
        print(f"using the local archive {archive}", file=sys.stderr)
    else:
        os.makedirs(os.path.join(dest, "downloads"), exist_ok=True)
        archive = os.path.join(dest, "downloads", base)
        if not os.path.exists(archive):
            print(f"downloading {url}", file=sys.stderr)
            fetch(url, archive)
    try:
        root = verify(archive, entry, sha256)
    except DataPrepError:
        if archive.startswith(os.path.join(dest, "downloads")):
            bad = archive + ".corrupt"
            os.replace(archive, bad)
            if os.path.exists(archive + ".sha256"):
                os.unlink(archive + ".sha256")
            print(f"moved the bad download to {bad}; a rerun downloads it again", file=sys.stderr)
        raise
    safe_extract(archive, root, target)
    print(f"{target}: ready", file=sys.stderr)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["flores", "model"], help="the FLORES-101 dataset or the FLORES-101 M2M checkpoint")
    p.add_argument("--dest", required=True, help="folder that receives downloads/ and the unpacked archive")
    p.add_argument("--size", default="615M", help="model size: 615M (default) or 175M")
    p.add_argument("--archive", default=None,
                   help="use this local archive instead of downloading (default: $FLORES_ARCHIVE / $MODEL_ARCHIVE)")
    p.add_argument("--url", default=None, help="download from this URL instead of the public one")
    p.add_argument("--sha256", default=None, help="expected sha256 of the archive (default: $FLORES_SHA256 / $MODEL_SHA256)")
    p.add_argument("--force", action="store_true", help="unpack again even if the folder is complete")
    a = p.parse_args(argv)
    env = "FLORES" if a.kind == "flores" else "MODEL"
    archive = a.archive or os.environ.get(f"{env}_ARCHIVE") or None
    sha = a.sha256 or os.environ.get(f"{env}_SHA256") or None
    return run_tool("lslo_data_prep.download", lambda: print(obtain(a.kind, a.dest, a.size, archive, a.url, sha,
                                                                      a.force)))


if __name__ == "__main__":
    sys.exit(main())
