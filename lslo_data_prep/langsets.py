"""Language sets for data preparation: ``model_code<TAB>flores_code<TAB>group`` rows.

The file format and its one reader are :mod:`lslo_common.langset_file` (``--lslo-langs FILE``
reads the same files); data preparation also needs every FLORES code and two languages.
"""
from __future__ import annotations

from typing import List

from lslo_common.errors import LSLoError
from lslo_common.langset_file import LangRow, LanguageSetError, read_language_rows


class DataPrepError(LSLoError, ValueError):
    """Bad input to data preparation; the message names the file or flag."""


def read_langset(path: str) -> List[LangRow]:
    """The rows of a language set for data preparation: FLORES codes required, at least 2 languages."""
    try:
        rows = read_language_rows(path, source="--langs")
    except LanguageSetError as e:
        raise DataPrepError(str(e)) from None
    without = [r.code for r in rows if r.flores is None]
    if without:
        raise DataPrepError(f"{path}: data preparation needs 'model_code<TAB>flores_code<TAB>group' rows; "
                            f"{without[0]!r} has no FLORES code")
    if len(rows) < 2:
        raise DataPrepError(f"{path}: a language set needs at least 2 languages, got {len(rows)}")
    return rows


def directions(rows: List[LangRow]) -> List[str]:
    """All ``src-tgt`` pairs of distinct languages, in file order."""
    return [f"{a.code}-{b.code}" for a in rows for b in rows if a.code != b.code]


def main() -> None:
    """``python -m lslo_data_prep.langsets FILE [pairs|codes|groups]``: print for shell scripts."""
    import sys

    path, what = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "pairs")
    rows = read_langset(path)
    if what == "pairs":
        print(",".join(directions(rows)))
    elif what == "codes":
        print(",".join(r.code for r in rows))
    elif what == "spec":
        print(",".join(f"{r.code}:{r.group}" for r in rows))
    else:
        raise SystemExit(f"unknown output {what!r}: pairs, codes or spec")


if __name__ == "__main__":
    main()
