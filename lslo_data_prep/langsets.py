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
    """``python -m lslo_data_prep.langsets FILE [pairs|codes|spec]``: print for shell scripts."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] not in PRINTS):
        print(f"usage: python -m lslo_data_prep.langsets FILE [{'|'.join(PRINTS)}]", file=sys.stderr)
        return USAGE_ERROR
    rows_of = PRINTS[argv[1] if len(argv) == 2 else "pairs"]
    return run_tool("lslo_data_prep.langsets", lambda: print(rows_of(read_langset(argv[0]))))


#: what ``main`` prints of a language set
PRINTS = {
    "pairs": lambda rows: ",".join(directions(rows)),
    "codes": lambda rows: ",".join(r.code for r in rows),
    "spec": lambda rows: ",".join(f"{r.code}:{r.group}" for r in rows),
}


if __name__ == "__main__":
    sys.exit(main())
