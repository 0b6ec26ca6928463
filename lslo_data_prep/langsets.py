"""Language-set files: ``model_code<TAB>flores_code<TAB>group`` rows (``#`` starts a comment)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List


class DataPrepError(RuntimeError):
    """Bad input to data preparation; the message names the file or flag."""


@dataclass(frozen=True)
class LangRow:
    code: str
    flores: str
    group: str


def read_langset(path: str) -> List[LangRow]:
    rows: List[LangRow] = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataPrepError(f"--langs: cannot read language set {path!r}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].rstrip("\n")
            if not line.strip():
                continue
            cols = [c.strip() for c in line.split("\t")]
            if len(cols) != 3 or not all(cols):
                raise DataPrepError(
                    f"{path}:{lineno}: expected 'model_code<TAB>flores_code<TAB>group', got {line!r}"
                )
            rows.append(LangRow(*cols))
    codes = [r.code for r in rows]
    dup = {c for c in codes if codes.count(c) > 1}
    if dup:
        raise DataPrepError(f"{path}: language {sorted(dup)[0]!r} is listed twice")
    if len(rows) < 2:
        raise DataPrepError(f"{path}: a language set needs at least 2 languages, got {len(rows)}")
    return rows


def directions(rows: List[LangRow]) -> List[str]:
    """All ``src-tgt`` pairs of distinct languages, in file order."""
    return [f"{a.code}-{b.code}" for a in rows for b in rows if a.code != b.code]


def main() -> None:
    """``python -m lslo_data_prep.langsets FILE [pairs|codes|spec|name]``: print for shell scripts."""
    import sys

    path, what = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "pairs")
    rows = read_langset(path)
    if what == "pairs":
        print(",".join(directions(rows)))
    elif what == "codes":
        print(",".join(r.code for r in rows))
    elif what == "spec":
        print(",".join(f"{r.code}:{r.group}" for r in rows))
    elif what == "name":
        print(set_name(path, rows))
    else:
        raise SystemExit(f"unknown output {what!r}: pairs, codes, spec or name")


def set_name(path: str, rows: List[LangRow]) -> str:
    """A folder name for a language set: the file's name and a hash of its languages, codes, FLORES
    codes and groups in order (two different inventories never get the same name)."""
    import hashlib
    import os

    stem = os.path.basename(path)
    stem = stem[:-4] if stem.endswith(".tsv") else stem
    digest = hashlib.sha1("\n".join(f"{r.code}\t{r.flores}\t{r.group}" for r in rows).encode("utf-8")).hexdigest()
    return f"{stem}-{len(rows)}langs-{digest[:8]}"


if __name__ == "__main__":
    main()
