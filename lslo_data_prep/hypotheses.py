"""Provenance of hypothesis files: which model files and settings produced ``GEN_DIR/{src}-{tgt}.gen``.

``lslo-evaluate`` writes, next to each ``{pair}.gen``, a record ``{pair}.gen.json`` (first the record,
then the hypotheses, each through a temporary name and a rename): the model files that produced
it (path, size, sha256: the checkpoint, and the adapter file of ``--lslo-adapters``), the
decoding settings and the sentence count.  A direction is *done* when both files exist and the
record names the same model files and settings as the run that looks at it.  Scoring refuses a
set of hypothesis files from different models; nothing here imports torch.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional

from lslo_common.atomic import atomic_write_text

from .fsutil import sha256_file
from .langsets import DataPrepError

FORMAT = "lslo-hypotheses/1"


def record_path(gen_path: str) -> str:
    return gen_path + ".json"


def file_identity(path: str, role: str) -> dict:
    """What identifies one model file: its role, where it was, its size and its sha256."""
    if not os.path.isfile(path):
        raise DataPrepError(f"{role} {path} does not exist")
    return {"role": role, "path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": sha256_file(path)}


def model_identity(files: Dict[str, str], overrides: Optional[str] = None) -> dict:
    """``{role: path}`` of the model files (e.g. checkpoint, adapters) -> the identity recorded per direction."""
    return {"files": [file_identity(path, role) for role, path in files.items() if path],
            "overrides": overrides or ""}


def same_model(recorded: dict, current: dict) -> bool:
    """Same model files by content (paths may differ: a moved or copied checkpoint is the same model)."""
    key = lambda ident: sorted((f["role"], f["sha256"]) for f in ident.get("files", []))  # noqa: E731
    return key(recorded) == key(current)


def describe(ident: dict) -> str:
    return ", ".join(f"{f['role']} {f['path']} (sha256 {f['sha256'][:12]}...)" for f in ident.get("files", [])) or "?"


def read_record(gen_path: str) -> Optional[dict]:
    """The record of a hypothesis file, or None if it has none."""
    path = record_path(gen_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise DataPrepError(f"{path}: unreadable record of {gen_path} ({e}); delete both files to decode again")
    if record.get("format") != FORMAT:
        raise DataPrepError(f"{path}: not a {FORMAT} record")
    return record


def write_record(gen_path: str, direction: str, model: dict, settings: dict, sentences: int) -> None:
    record = {"format": FORMAT, "direction": direction, "sentences": sentences, "model": model, "settings": settings}
    atomic_write_text(record_path(gen_path), json.dumps(record, indent=1, sort_keys=True) + "\n")


def mismatch(gen_path: str, record: Optional[dict], model: dict, settings: Optional[dict]) -> Optional[str]:
    """Why ``gen_path`` (with ``record``) cannot stand for this model and these settings; None if it can."""
    if record is None:
        return (f"{gen_path} has no record of the checkpoint that produced it ({os.path.basename(record_path(gen_path))} "
                f"is missing: written by fairseq-generate or an older evaluation?)")
    if not same_model(record["model"], model):
        return f"{gen_path} was decoded by another model: {describe(record['model'])}, not {describe(model)}"
    if settings is not None and record.get("settings") != settings:
        diff = sorted(k for k in set(settings) | set(record.get("settings", {}))
                      if settings.get(k) != record.get("settings", {}).get(k))
        return (f"{gen_path} was decoded with other settings: "
                + ", ".join(f"{k} {record['settings'].get(k)!r} (now {settings.get(k)!r})" for k in diff))
    return None


def check_same_model(gen_paths: Iterable[str], expect: Optional[dict] = None) -> Optional[dict]:
    """All hypothesis files come from one model (``expect`` if given) with the same settings.

    Files without a record are accepted only when none has one and nothing is expected (plain
    fairseq-generate outputs, as before).  Returns the common record's model identity, if any.
    """
    paths: List[str] = list(gen_paths)
    records = {p: read_record(p) for p in paths}
    recorded = [p for p in paths if records[p] is not None]
    if not recorded and expect is None:
        return None
    first = records[recorded[0]] if recorded else None
    model = expect if expect is not None else first["model"]
    settings = first.get("settings") if first is not None else None
    for path in paths:
        problem = mismatch(path, records[path], model, settings)
        if problem:
            raise DataPrepError(problem + "; refusing to score hypotheses of different models together "
                                          "(decode it again into an empty folder, or delete it)")
    return model
