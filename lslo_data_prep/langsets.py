"""Language sets for data preparation: ``model_code<TAB>flores_code<TAB>group`` rows.

The file format and its one reader are :mod:`lslo_common.langset_file` (``--lslo-langs FILE``
reads the same files); data preparation also needs every FLORES code and two languages.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from lslo_common.errors import LSLoError
from lslo_common.langset_file import LangRow, LanguageSetError, read_language_rows
from lslo_common.runner import USAGE_ERROR, run_tool


class DataPrepError(LSLoError, ValueError):
    """Bad input to data preparation; the message names the file or flag."""


def read_langset(path: str, flores_optional: bool = False) -> List[LangRow]:
    """The rows of a language set for data preparation: at least 2 languages, each with its FLORES code
    (downloading and preparing need it) unless ``flores_optional`` (scoring does not)."""
    try:
        rows = read_language_rows(path, source="--langs")
    except LanguageSetError as e:
        raise DataPrepError(str(e)) from None
    without = [r for r in rows if r.flores is None]
    if without and not flores_optional:
        raise DataPrepError(f"{path}:{without[0].line}: data preparation needs 'model_code<TAB>flores_code<TAB>group' "
                            f"rows; {without[0].code!r} has no FLORES code")
    if len(rows) < 2:
        raise DataPrepError(f"{path}: a language set needs at least 2 languages, got {len(rows)}")
    return rows


def directions(rows: List[LangRow]) -> List[str]:
    """All ``src-tgt`` pairs of distinct languages, in file order."""
    return [f"{a.code}-{b.code}" for a in rows for b in rows if a.code != b.code]


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m lslo_data_prep.langsets FILE [pairs|codes|spec|name]``: print for shell scripts."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] not in (*PRINTS, "name")):
        print(f"usage: python -m lslo_data_prep.langsets FILE [{'|'.join(PRINTS)}|name]", file=sys.stderr)
        return USAGE_ERROR
    if len(argv) == 2 and argv[1] == "name":
        return run_tool("lslo_data_prep.langsets", lambda: print(set_name(argv[0], read_langset(argv[0]))))
    rows_of = PRINTS[argv[1] if len(argv) == 2 else "pairs"]
    return run_tool("lslo_data_prep.langsets", lambda: print(rows_of(read_langset(argv[0]))))


#: what ``main`` prints of a language set
PRINTS = {
    "pairs": lambda rows: ",".join(directions(rows)),
    "codes": lambda rows: ",".join(r.code for r in rows),
    "spec": lambda rows: ",".join(f"{r.code}:{r.group}" for r in rows),
}


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
    sys.exit(main())
