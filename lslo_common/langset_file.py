"""Language-set files: the one reader, for ``--lslo-langs FILE`` and for data preparation.

One row per language, tab-separated: ``code<TAB>group`` or ``code<TAB>flores_code<TAB>group``
(e.g. ``en<TAB>eng<TAB>high``).  ``#`` starts a comment; blank lines are skipped; spaces
around cells are ignored.  Every cell must be non-empty and a code may appear once.  Rows of
both kinds may mix; data preparation needs the FLORES code of every row (``lslo_data_prep.langsets``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .errors import LSLoConfigError

FORMATS = "'code<TAB>group' or 'code<TAB>flores_code<TAB>group'"


class LanguageSetError(LSLoConfigError):
    """A language-set file cannot be read or breaks the rules above; the message names file and line."""


@dataclass(frozen=True)
class LangRow:
    """One language: its model code, its FLORES-101 code (3-column files only) and its resource group."""

    code: str
    flores: Optional[str]
    group: str
    line: int = field(default=0, compare=False)  # where it is in the file, for messages


def read_language_rows(path: str, source: str = "language set") -> List[LangRow]:
    """The rows of a language-set file; ``source`` (e.g. ``--langs``) starts the message of an unreadable file."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LanguageSetError(f"{source}: cannot read language set {path!r}: {e.strerror}") from None
    rows: List[LangRow] = []
    with f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].rstrip("\n")
            if not line.strip():
                continue
            cols = [c.strip() for c in line.split("\t")]
            if len(cols) not in (2, 3) or not all(cols):
                raise LanguageSetError(f"{path}:{lineno}: expected {FORMATS}, got {line!r}")
            code, flores, group = cols if len(cols) == 3 else (cols[0], None, cols[1])
            row = LangRow(code, flores, group, lineno)
            if any(r.code == row.code for r in rows):
                raise LanguageSetError(f"{path}:{lineno}: language {row.code!r} is listed twice")
            rows.append(row)
    if not rows:
        raise LanguageSetError(f"{path}: no languages (expected rows like {FORMATS})")
    return rows
