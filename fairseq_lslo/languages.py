"""Language inventory: codes, resource groups, per-group values and language-token ids.

This is the bottom layer of the package: it knows nothing about models.  The inventory
always comes from the command line (``--lslo-langs en:high,fr:high``) or from a TSV file
(``code<TAB>group`` per row, or ``code<TAB>flores_code<TAB>group``), never from code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence, Tuple, TypeVar

from lslo_common.langset_file import read_language_rows

from .errors import LSLoConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Language:
    code: str
    group: str


class LanguageInventory:
    """Ordered list of languages, each in one resource group; the order fixes adapter ids."""

    def __init__(self, languages: Iterable[Tuple[str, str]], source: str = "--lslo-langs"):
        self.languages: List[Language] = []
        self._index: Dict[str, int] = {}
        for code, group in languages:
            code, group = code.strip(), group.strip()
            if not code or not group:
                raise LSLoConfigError(f"{source}: every language needs a code and a group, got {code!r}:{group!r}")
            if code in self._index:
                raise LSLoConfigError(f"{source}: language {code!r} is listed twice")
            self._index[code] = len(self.languages)
            self.languages.append(Language(code, group))
        if not self.languages:
            raise LSLoConfigError(f"{source}: no languages given")

    @classmethod
    def from_spec(cls, spec: str) -> "LanguageInventory":
        """Parse ``en:high,fr:high,wo:low`` or the path of a TSV file."""
        if spec is None or not str(spec).strip():
            raise LSLoConfigError("--lslo-langs is required: a list like en:high,fr:high,wo:low or a TSV file")
        spec = str(spec).strip()
        if os.path.isfile(spec):
            return cls.from_tsv(spec)
        pairs = []
        for item in spec.split(","):
            if ":" not in item:
                hint = " (no such file either)" if ("/" in spec or spec.endswith(".tsv")) else ""
                raise LSLoConfigError(
                    f"--lslo-langs: expected code:group items like en:high, got {item!r}{hint}"
                )
            code, group = item.split(":", 1)
            pairs.append((code, group))
        return cls(pairs)

    @classmethod
    def from_tsv(cls, path: str) -> "LanguageInventory":
        """Read a language-set file (``code<TAB>group`` or ``code<TAB>flores_code<TAB>group`` rows, see
        :mod:`lslo_common.langset_file`)."""
        rows = read_language_rows(path, source="--lslo-langs")
        return cls([(r.code, r.group) for r in rows], source=path)

    def __len__(self) -> int:
        return len(self.languages)

    def __contains__(self, code: str) -> bool:
        return code in self._index

    def index(self, code: str) -> int:
        try:
            return self._index[code]
        except KeyError:
            raise LSLoConfigError(
                f"language {code!r} is not in --lslo-langs ({','.join(self.codes)}); add it as {code}:GROUP"
            ) from None

    @property
    def codes(self) -> List[str]:
        return [lang.code for lang in self.languages]

    @property
    def groups(self) -> List[str]:
        """Resource groups in order of first appearance."""
        seen: List[str] = []
        for lang in self.languages:
            if lang.group not in seen:
                seen.append(lang.group)
        return seen

    def group_of(self, code: str) -> str:
        return self.languages[self.index(code)].group

    def to_spec(self) -> str:
        return ",".join(f"{lang.code}:{lang.group}" for lang in self.languages)

    def to_json(self) -> List[List[str]]:
        return [[lang.code, lang.group] for lang in self.languages]


def parse_group_values(
    spec, flag: str, cast: Callable[[str], T], groups: Sequence[str]
) -> Dict[str, T]:
    """Parse ``high:2,medium:2,low:8`` (or a single value for every group) into ``{group: value}``.

    Every group in ``groups`` must get a value and every named group must exist.
    """
    text = str(spec).strip()
    try:
        if ":" not in text:
            value = cast(text)
            return {g: value for g in groups}
        values: Dict[str, T] = {}
        for item in text.split(","):
            group, _, raw = item.partition(":")
            values[group.strip()] = cast(raw.strip())
    except ValueError as e:
        raise LSLoConfigError(f"{flag}: cannot parse {text!r} ({e}); expected e.g. high:2,medium:2,low:8 or one value") from None
    unknown = [g for g in values if g not in groups]
    if unknown:
        raise LSLoConfigError(
            f"{flag}: unknown group {unknown[0]!r}; the groups of --lslo-langs are {', '.join(groups)}"
        )
    missing = [g for g in groups if g not in values]
    if missing:
        raise LSLoConfigError(f"{flag}: no value for group {missing[0]!r} (given: {text})")
    return values


def parse_ranks(spec, inventory: LanguageInventory) -> List[int]:
    """Per-language ranks (in inventory order) from ``--lslo-rank``."""
    by_group = parse_group_values(spec, "--lslo-rank", int, inventory.groups)
    for group, rank in by_group.items():
        if rank <= 0:
            raise LSLoConfigError(f"--lslo-rank: rank of group {group!r} must be a positive integer, got {rank}")
    return [by_group[lang.group] for lang in inventory.languages]


def dumps_config(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))
