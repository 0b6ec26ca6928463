"""Checking a ``POST /translate`` body: every problem is a 4xx naming the field (no web framework here).

Body: ``{"src": "en", "tgt": "de", "text": ["...", ...]}``.  ``src``/``tgt`` are one code for
the whole request or a list with one code per text; an item of ``text`` may also be an object
``{"text": "...", "src": "fr", "tgt": "en"}`` whose codes override the request's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

from ..errors import LSLoError


class RequestError(LSLoError, ValueError):
    """A bad request: ``field`` names the JSON field, ``status`` is the HTTP status to answer with."""

    def __init__(self, field: Optional[str], message: str, status: int = 400):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict:
        return {"error": str(self), "field": self.field}


@dataclass
class TranslateRequest:
    texts: List[str]
    srcs: List[str]
    tgts: List[str]
    lengths: List[int]  # source tokens the model sees, per text


def _code(value: Any, field: str, languages: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"expected a language code (a string), got {type(value).__name__}")
    if value not in languages:
        raise RequestError(field, f"unknown language {value!r}; this model serves {', '.join(languages)}")
    return value


def _codes(body: dict, key: str, n: int) -> List[Any]:
    """The request-level ``src`` or ``tgt``: one value per text (None where absent)."""
    value = body.get(key)
    if isinstance(value, list):
        if len(value) != n:
            raise RequestError(key, f"a list of {len(value)} codes for {n} texts; give one code, or one per text")
        return list(value)
    return [value] * n


def parse_translate_request(body: Any, languages: Sequence[str], directions: Sequence[str],
                            count_tokens: Callable[[str, str], int], max_input_tokens: int) -> TranslateRequest:
    """The checked request, or :class:`RequestError` for the first problem found."""
    if not isinstance(body, dict):
        raise RequestError("body", f"expected a JSON object {{\"src\": ..., \"tgt\": ..., \"text\": [...]}}, "
                                 f"got {type(body).__name__}")
    if "text" not in body:
        raise RequestError("text", "missing: give the sentences to translate as a list of strings")
    items = body["text"]
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise RequestError("text", f"expected a list of strings, got {type(items).__name__}")
    if not items:
        raise RequestError("text", "empty list: nothing to translate")
    srcs, tgts = _codes(body, "src", len(items)), _codes(body, "tgt", len(items))
    texts, out_srcs, out_tgts, lengths = [], [], [], []
    for i, item in enumerate(items):
        where = f"text[{i}]"
        src_field = f"src[{i}]" if isinstance(body.get("src"), list) else "src"
        tgt_field = f"tgt[{i}]" if isinstance(body.get("tgt"), list) else "tgt"
        src, tgt = srcs[i], tgts[i]
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"text", "src", "tgt"})
            if unknown:
                raise RequestError(f"{where}.{unknown[0]}", "unknown field; an item has text, src and tgt")
            if "src" in item:
                src, src_field = item["src"], f"{where}.src"
            if "tgt" in item:
                tgt, tgt_field = item["tgt"], f"{where}.tgt"
            if "text" not in item:
                raise RequestError(f"{where}.text", "missing")
            item, where = item["text"], f"{where}.text"
        if not isinstance(item, str):
            raise RequestError(where, f"expected a string, got {type(item).__name__}")
        if not item.strip():
            raise RequestError(where, "empty text")
        if src is None:
            raise RequestError(src_field, "missing: give \"src\" for the request, or per item")
        if tgt is None:
            raise RequestError(tgt_field, "missing: give \"tgt\" for the request, or per item")
        src, tgt = _code(src, src_field, languages), _code(tgt, tgt_field, languages)
        if f"{src}-{tgt}" not in directions:
            raise RequestError(tgt_field, f"direction {src}-{tgt} is not served; this model serves "
                                          f"{', '.join(directions)}")
        n = count_tokens(item, src)
        if n > max_input_tokens:
            raise RequestError(where, f"{n} tokens, more than --max-input-tokens {max_input_tokens}", status=413)
        texts.append(item)
        out_srcs.append(src)
        out_tgts.append(tgt)
        lengths.append(n)
    return TranslateRequest(texts, out_srcs, out_tgts, lengths)
