"""Reading each sample's languages from its tokens: the one place that knows where fairseq puts them.

Both the model's routing (:class:`~fairseq_lslo.modules.routing.LanguageResolver`) and the
criterion's per-language metrics (:mod:`fairseq_lslo.criterions.target_languages`) read
languages through :class:`LanguageTokens`, so they cannot disagree.

Where fairseq 0.12's ``translation_multi_simple_epoch`` puts the tokens
(``MultilingualDatasetManager``, ``LanguagePairDataset``, ``TransformEosLangPairDataset``):

* the token of a language is ``get_lang_tok(lang, --lang-tok-style, spec)``: ``__xx__``
  (multilingual) or ``[xx]`` (mbart); the spec is ``--encoder-langtok`` / ``tgt`` for
  ``--decoder-langtok`` (or ``--langtoks``' "main" entry);
* source side (looked up in the *source* dictionary): ``--encoder-langtok src`` puts the source
  language's token there, ``--encoder-langtok tgt`` the *target* language's;
  it is prepended (``__xx__ w ... </s>``) or, with ``--lang-tok-replacing-bos-eos``, replaces
  the final ``</s>`` (``w ... __xx__``); padding is left or right (``--left-pad-source``);
* target side (looked up in the *target* dictionary): ``--decoder-langtok`` prepends the
  target token to the target, so ``prev_output_tokens`` is ``</s> __xx__ w ...``; with
  ``--lang-tok-replacing-bos-eos`` the target has no token and ``prev_output_tokens`` is
  ``__xx__ w ...``; padding follows ``--left-pad-target``;
* in generation the decoder input at step 0 is ``</s>`` (the token is a forced prefix) or,
  with ``--lang-tok-replacing-bos-eos``, the token itself (``bos_token``); either way the
  target language is fixed at encoding time, from the source-side token or from ``-t``.

A side without a token can still be known when every direction of the task shares it
(``-s``/``-t`` in generation, a one-to-many ``--lang-pairs``, or a bilingual task).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .errors import LSLoConfigError

SOURCE, TARGET = "source", "target"


def lang_token(code: str, style: str = "multilingual", spec: str = "main") -> str:
    """The dictionary symbol fairseq uses for a language (fairseq's own ``get_lang_tok``)."""
    from fairseq.data.multilingual.multilingual_utils import get_lang_tok

    if style not in ("multilingual", "mbart"):
        raise LSLoConfigError(f"--lang-tok-style: unknown style {style!r} (expected multilingual or mbart)")
    return get_lang_tok(lang=code, lang_tok_style=style, spec=spec or "main")


def first_non_pad(tokens: Tensor, pad: int) -> Tensor:
    """Column of each row's first non-pad token (left or right padding)."""
    return tokens.ne(pad).long().argmax(dim=1)


def last_non_pad(tokens: Tensor, pad: int) -> Tensor:
    """Column of each row's last non-pad token (left or right padding)."""
    return tokens.size(1) - 1 - tokens.ne(pad).long().flip(1).argmax(dim=1)


@dataclass(frozen=True)
class TokenLayout:
    """Which language tokens a multilingual task's batches carry, and where."""

    style: str = "multilingual"
    encoder_spec: Optional[str] = None  # None, "src", "tgt" (or "src.dae", ...): fairseq's encoder langtok spec
    decoder_spec: Optional[str] = None  # None or "tgt" (...): fairseq's decoder langtok spec
    replacing_bos_eos: bool = False

    @classmethod
    def from_task_args(cls, targs) -> Optional["TokenLayout"]:
        """The layout of ``translation_multi_simple_epoch``-style args; None for a task without langtoks."""
        if targs is None or not hasattr(targs, "encoder_langtok"):
            return None
        main = (getattr(targs, "langtoks", None) or {}).get("main")
        if main is None:  # what MultilingualDatasetManager.prepare derives
            main = (targs.encoder_langtok or None, "tgt" if getattr(targs, "decoder_langtok", False) else None)
        enc, dec = main
        layout = cls(getattr(targs, "lang_tok_style", "multilingual") or "multilingual", enc or None, dec or None,
                     bool(getattr(targs, "lang_tok_replacing_bos_eos", False)))
        layout.check_extra_data(targs)
        return layout

    def check_extra_data(self, targs) -> None:
        """Every data category must carry the same kind of tokens as the main data (LSLo reads one kind)."""
        extra = getattr(targs, "extra_data", None) or {}
        langtoks = getattr(targs, "langtoks", None) or {}
        for category in extra:
            enc, dec = langtoks.get(category, (None, None))
            if (enc or None, dec or None) != (self.encoder_spec, self.decoder_spec):
                raise LSLoConfigError(
                    f"--extra-data category {category!r} has language tokens {(enc, dec)} (from --langtoks), the main "
                    f"data {(self.encoder_spec, self.decoder_spec)}: LSLo reads one kind of token; give "
                    f"{category!r} the main data's entry in --langtoks"
                )

    @property
    def source_token_names(self) -> Optional[str]:
        """Which language the source-side token names (fairseq: a spec starting with 'src' is the source)."""
        if not self.encoder_spec:
            return None
        return SOURCE if self.encoder_spec.startswith("src") else TARGET

    def source_column(self, src_tokens: Tensor, pad: int) -> Tensor:
        """Column of the source-side language token in each row."""
        if self.replacing_bos_eos:  # it replaced the final </s>
            return last_non_pad(src_tokens, pad)
        return first_non_pad(src_tokens, pad)

    def decoder_column(self, prev_output_tokens: Tensor, pad: int) -> Tensor:
        """Column of the target language token in ``prev_output_tokens`` (``</s> __xx__ ...`` or ``__xx__ ...``)."""
        return first_non_pad(prev_output_tokens, pad) + (0 if self.replacing_bos_eos else 1)

    def describe(self) -> str:
        parts = [f"--lang-tok-style {self.style}"]
        if self.encoder_spec:
            parts.append(f"--encoder-langtok {self.encoder_spec}")
        if self.decoder_spec:
            parts.append("--decoder-langtok")
        if self.replacing_bos_eos:
            parts.append("--lang-tok-replacing-bos-eos")
        return " ".join(parts)


def token_table(codes: Sequence[str], dictionary, style: str, spec: str, side: str) -> Tensor:
    """Vocabulary-sized table: a language token's id -> its inventory id, -1 elsewhere."""
    table = torch.full((len(dictionary),), -1, dtype=torch.long)
    for i, code in enumerate(codes):
        symbol = lang_token(code, style, spec)
        idx = dictionary.index(symbol)
        if idx == dictionary.unk():
            raise LSLoConfigError(
                f"language {code!r} of --lslo-langs has no token {symbol} in the {side} dictionary; list it in --langs (or "
                f"--lang-pairs) so that fairseq adds it, and binarize with that dictionary"
            )
        table[idx] = i
    return table


def shared_language(pairs: Sequence[str], side: int) -> Optional[str]:
    """The one language all directions share on a side (0 source, 1 target), or None."""
    codes = {p.split("-")[side] for p in pairs if "-" in p}
    return codes.pop() if len(codes) == 1 else None


def task_directions(task) -> List[str]:
    """The task's directions: ``--lang-pairs`` (``-s``/``-t`` in generation), or a bilingual task's pair."""
    targs = getattr(task, "args", None)
    pairs = getattr(task, "lang_pairs", None) or getattr(targs, "lang_pairs", None) or []
    if isinstance(pairs, str):
        pairs = pairs.split(",")
    pairs = [p for p in pairs if p]
    if not pairs and getattr(targs, "source_lang", None) and getattr(targs, "target_lang", None):
        pairs = [f"{targs.source_lang}-{targs.target_lang}"]
    return pairs


class LanguageTokens(nn.Module):
    """Reads each sample's source and target language (inventory ids) from a batch's tokens.

    ``source``/``target`` return ids (``-1`` where the expected position holds no language token
    of the inventory), or None where the batch cannot tell (the caller decides whether that is an
    error).  The tables are non-persistent buffers: they follow the model to its device.
    """

    def __init__(self, codes: Sequence[str], layout: Optional[TokenLayout], src_dict, tgt_dict,
                 fixed_src: Optional[int] = None, fixed_tgt: Optional[int] = None):
        super().__init__()
        self.codes = list(codes)
        self.layout = layout
        self.src_pad, self.tgt_pad = src_dict.pad(), tgt_dict.pad()
        self.fixed_src, self.fixed_tgt = fixed_src, fixed_tgt
        names = layout.source_token_names if layout is not None else None
        self.source_names = names  # which language the source-side token names, if any
        empty = torch.zeros(0, dtype=torch.long)
        self.register_buffer(
            "src_table",
            token_table(self.codes, src_dict, layout.style, layout.encoder_spec, "source") if names else empty,
            persistent=False,
        )
        has_dec = layout is not None and bool(layout.decoder_spec)
        self.register_buffer(
            "tgt_table",
            token_table(self.codes, tgt_dict, layout.style, layout.decoder_spec, "target") if has_dec else empty,
            persistent=False,
        )
        self.has_decoder_token = has_dec

    @classmethod
    def from_task(cls, task, codes: Sequence[str]) -> "LanguageTokens":
        targs = getattr(task, "args", None)
        pairs = task_directions(task)
        fixed = []
        for side, flag in ((0, "source_lang"), (1, "target_lang")):  # -s/-t, else what all directions share
            code = getattr(targs, flag, None) or shared_language(pairs, side)
            fixed.append(codes.index(code) if code in codes else None)
        return cls(codes, TokenLayout.from_task_args(targs), task.source_dictionary, task.target_dictionary,
                   fixed[0], fixed[1])

    # --- what can be known ---------------------------------------------------------------
    @property
    def source_known(self) -> bool:
        return self.source_names == SOURCE or self.fixed_src is not None

    @property
    def target_known(self) -> bool:
        return self.has_decoder_token or self.source_names == TARGET or self.fixed_tgt is not None

    @property
    def target_known_at_encoding(self) -> bool:
        """Known without ``prev_output_tokens`` (generation): from the source-side token or the task."""
        return self.source_names == TARGET or self.fixed_tgt is not None

    def require(self, needs_src: bool, needs_tgt: bool, who: str) -> None:
        """Fail at set-up, naming the flag to add, when a needed side cannot be read from the batches."""
        layout = self.layout
        if needs_src and not self.source_known:
            if layout is None:
                raise LSLoConfigError(f"{who} needs the source language: pass --source-lang (or use a multilingual task)")
            hint = ""
            if self.source_names == TARGET:
                hint = (" (--encoder-langtok tgt puts the *target* language token on the source side, so no token "
                        "names the source language)")
            raise LSLoConfigError(
                f"{who} needs each sample's source language, read from the source language token{hint}: add "
                f"--encoder-langtok src"
            )
        if needs_tgt and not self.target_known:
            if layout is None:
                raise LSLoConfigError(f"{who} needs the target language: pass --target-lang (or use a multilingual task)")
            raise LSLoConfigError(
                f"{who} needs each sample's target language, read from the target language token: add "
                f"--decoder-langtok"
            )

    # --- reading -------------------------------------------------------------------------
    def _source_token_ids(self, src_tokens: Tensor) -> Tensor:
        col = self.layout.source_column(src_tokens, self.src_pad)
        tok = src_tokens.gather(1, col.unsqueeze(1)).squeeze(1)
        return self.src_table.to(tok.device)[tok]

    def _fixed(self, value: int, batch: int, device) -> Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=device)

    def source(self, src_tokens: Tensor) -> Optional[Tensor]:
        if self.source_names == SOURCE:
            return self._source_token_ids(src_tokens)
        if self.fixed_src is not None:
            return self._fixed(self.fixed_src, src_tokens.size(0), src_tokens.device)
        return None

    def target(self, src_tokens: Tensor, prev_output_tokens: Optional[Tensor] = None) -> Optional[Tensor]:
        """From ``prev_output_tokens`` (training, scoring), else the source-side token, else the task."""
        width = 1 if self.layout is not None and self.layout.replacing_bos_eos else 2
        if self.has_decoder_token and prev_output_tokens is not None and prev_output_tokens.size(1) >= width:
            col = self.layout.decoder_column(prev_output_tokens, self.tgt_pad).clamp_(max=prev_output_tokens.size(1) - 1)
            tok = prev_output_tokens.gather(1, col.unsqueeze(1)).squeeze(1)
            return self.tgt_table.to(tok.device)[tok]
        if self.source_names == TARGET:
            return self._source_token_ids(src_tokens)
        if self.fixed_tgt is not None:
            return self._fixed(self.fixed_tgt, src_tokens.size(0), src_tokens.device)
        return None

    def where(self, side: str) -> str:
        """Where a side's language is read (``side`` is SOURCE or TARGET), for error messages."""
        layout = self.layout
        if side == TARGET and self.has_decoder_token:
            pos = "first" if layout.replacing_bos_eos else "second"
            return f"the {pos} token of prev_output_tokens ({layout.describe()})"
        if self.source_names == side:
            pos = "last" if layout.replacing_bos_eos else "first"
            return f"the {pos} token of the source ({layout.describe()})"
        return "the task's languages"
