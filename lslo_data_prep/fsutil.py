"""Step stamps (a stamp is written last and trusted only if it matches), hashes and atomic links.

Atomic writes themselves are :mod:`lslo_common.atomic`."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional

from lslo_common.atomic import atomic_write_text


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link_atomic(src: str, dst: str) -> None:
    """Make ``dst`` a hard link to ``src`` (a relative symlink where hard links fail); no-op if it already is."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{os.getpid()}.lnk")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        os.symlink(os.path.relpath(src, os.path.dirname(dst)), tmp)
    os.replace(tmp, dst)


class Stamps:
    """One JSON stamp per finished step: the digest of its inputs and the sha256 of its outputs."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, step: str) -> str:
        return os.path.join(self.directory, step + ".json")

    def done(self, step: str, inputs: str, outputs: Dict[str, str]) -> bool:
        """True if the step finished with these inputs and its outputs are still there, unchanged in size."""
        try:
            with open(self._path(step), encoding="utf-8") as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            return False
        if stamp.get("inputs") != inputs or sorted(stamp.get("outputs", {})) != sorted(outputs):
            return False
        for name, path in outputs.items():
            if not os.path.exists(path) or os.path.getsize(path) != stamp["outputs"][name]["size"]:
                return False
        return True

    def clear(self, step: str) -> None:
        if os.path.exists(self._path(step)):
            os.unlink(self._path(step))

    def write(self, step: str, inputs: str, outputs: Dict[str, str]) -> None:
        record = {
            "inputs": inputs,
            "outputs": {n: {"size": os.path.getsize(p), "sha256": sha256_file(p)} for n, p in outputs.items()},
        }
        atomic_write_text(self._path(step), json.dumps(record, indent=1, sort_keys=True) + "\n")

    def output_hash(self, step: str, name: str) -> Optional[str]:
        try:
            with open(self._path(step), encoding="utf-8") as f:
                return json.load(f)["outputs"][name]["sha256"]
        except (OSError, ValueError, KeyError):
            return None
