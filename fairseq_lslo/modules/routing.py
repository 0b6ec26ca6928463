"""Per-sample language routing: from the batch's language tokens to every LSLo module.

Language ids flow once per forward pass: the :class:`LanguageResolver` reads them from the
batch (or takes them from the caller), the encoder stores them in ``encoder_out`` (so beam
search reorders them with everything else), and the :class:`LanguageRouter` that every
LSLo module of the model shares hands them to the modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..langtok import SOURCE, TARGET, LanguageTokens

#: keys this package adds to fairseq's ``encoder_out`` dict
SRC_KEY, TGT_KEY, UNIFORM_KEY = "lslo_src_lang", "lslo_tgt_lang", "lslo_uniform"


@dataclass
class BatchLanguages:
    """Inventory ids of each sample's source and target language (None: not needed)."""

    src: Optional[Tensor]
    tgt: Optional[Tensor]
    src_uniform: Optional[int] = None  # the one id every sample has, if so
    tgt_uniform: Optional[int] = None

    def to_encoder_out(self) -> Dict[str, List[Tensor]]:
        flags = torch.tensor(
            [-1 if self.src_uniform is None else self.src_uniform, -1 if self.tgt_uniform is None else self.tgt_uniform]
        )
        return {
            SRC_KEY: [] if self.src is None else [self.src],
            TGT_KEY: [] if self.tgt is None else [self.tgt],
            UNIFORM_KEY: [flags],
        }

    @classmethod
    def from_encoder_out(cls, encoder_out: Dict[str, List[Tensor]]) -> "BatchLanguages":
        if encoder_out is None or UNIFORM_KEY not in encoder_out:
            raise RuntimeError(
                "the LSLo decoder needs the encoder_out of an LSLo encoder (it carries each sample's languages)"
            )
        us, ut = encoder_out[UNIFORM_KEY][0].tolist()
        src = encoder_out[SRC_KEY][0] if encoder_out[SRC_KEY] else None
        tgt = encoder_out[TGT_KEY][0] if encoder_out[TGT_KEY] else None
        return cls(src, tgt, None if us < 0 else us, None if ut < 0 else ut)

    @staticmethod
    def reorder_encoder_out(old: Dict[str, List[Tensor]], new: Dict[str, List[Tensor]], new_order: Tensor) -> None:
        """Copy the language entries of ``old`` into ``new``, following the batch reordering."""
        for key in (SRC_KEY, TGT_KEY):
            new[key] = [t.index_select(0, new_order) for t in old.get(key, [])]
        if UNIFORM_KEY in old:
            new[UNIFORM_KEY] = old[UNIFORM_KEY]


class LanguageRouter:
    """Holds the current batch's languages; every LSLo module of one model shares it."""

    def __init__(self) -> None:
        self.languages: Optional[BatchLanguages] = None

    def set(self, languages: BatchLanguages) -> None:
        self.languages = languages

    def lookup(self, route: str) -> Tuple[Optional[Tensor], Optional[int]]:
        """(per-sample slot ids, the slot shared by all samples or None) for a route."""
        if route == "shared":
            return None, 0
        if self.languages is None:
            raise RuntimeError(
                "LSLo module called before the batch's languages were set: run the model through its "
                "encoder/decoder (or LSLoTransformerModel.forward), not a layer alone"
            )
        if route == "src":
            ids, uniform = self.languages.src, self.languages.src_uniform
        elif route == "tgt":
            ids, uniform = self.languages.tgt, self.languages.tgt_uniform
        else:
            raise ValueError(f"unknown route {route!r}")
        if ids is None and uniform is None:
            raise RuntimeError(f"no {route} language is known for this batch")
        return ids, uniform


class LanguageResolver(nn.Module):
    """Each sample's source and target language (inventory ids), for the sides the model routes by.

    Reading them from the tokens is :class:`~fairseq_lslo.langtok.LanguageTokens`' job (the one
    place that knows where fairseq puts language tokens; the criterion reads through it too).
    This adds what routing needs: ids given by the caller (``lslo_src_lang`` / ``lslo_tgt_lang``
    in ``net_input``) come first, every id is checked against the inventory, and a batch of one
    language is flagged for the fast path.  In generation the decoder input at step 0 holds no
    target language token (``</s>``): the target language is then taken at encoding time (from
    the source-side token with ``--encoder-langtok tgt``, or ``-t``), so position 0 is routed
    exactly as in training.
    """

    def __init__(self, tokens: LanguageTokens, needs_src: bool, needs_tgt: bool):
        super().__init__()
        tokens.require(needs_src, needs_tgt, "LSLo routing (--lslo-encoder-routing/--lslo-decoder-routing)")
        self.tokens = tokens
        self.codes = list(tokens.codes)
        self.needs_src, self.needs_tgt = needs_src, needs_tgt

    # --- per side ---------------------------------------------------------------------
    def source_ids(self, src_tokens: Tensor, given: Optional[Tensor] = None) -> Optional[Tensor]:
        if not self.needs_src:
            return None
        if given is not None:
            return given.to(src_tokens.device)
        ids = self.tokens.source(src_tokens)
        if ids is None:
            raise RuntimeError(
                "the source language of the batch is unknown: use --encoder-langtok src, or -s/--source-lang, "
                "or pass lslo_src_lang in net_input"
            )
        return ids

    def target_ids(
        self, src_tokens: Tensor, prev_output_tokens: Optional[Tensor] = None, given: Optional[Tensor] = None
    ) -> Optional[Tensor]:
        """Target ids, or None when not needed or not known yet (generation: decided at encoding)."""
        if not self.needs_tgt:
            return None
        if given is not None:
            return given.to(src_tokens.device)
        return self.tokens.target(src_tokens, prev_output_tokens)

    # --- both sides, checked ----------------------------------------------------------
    def resolve(
        self,
        src_tokens: Tensor,
        prev_output_tokens: Optional[Tensor] = None,
        src_given: Optional[Tensor] = None,
        tgt_given: Optional[Tensor] = None,
    ) -> BatchLanguages:
        src = self.source_ids(src_tokens, src_given)
        tgt = self.target_ids(src_tokens, prev_output_tokens, tgt_given)
        if self.needs_tgt and tgt is None:
            raise RuntimeError(
                "the target language of the batch is unknown before decoding: run fairseq-generate with "
                "-t/--target-lang, or pass lslo_tgt_lang (inventory ids) in net_input"
            )
        sides = [(name, ids) for name, ids in ((SOURCE, src), (TARGET, tgt)) if ids is not None]
        if not sides:
            return BatchLanguages(None, None)
        # one host sync per batch: validity and "the whole batch is one language" together
        stats = torch.stack([s for _, ids in sides for s in (ids.min(), ids.max())]).tolist()
        uniform: Dict[str, Optional[int]] = {}
        for i, (name, ids) in enumerate(sides):
            lo, hi = stats[2 * i], stats[2 * i + 1]
            if lo < 0 or hi >= len(self.codes):
                self._raise_bad(ids, name)
            uniform[name] = lo if lo == hi else None
        return BatchLanguages(src, tgt, uniform.get(SOURCE), uniform.get(TARGET))

    def _raise_bad(self, ids: Tensor, side: str) -> None:
        bad = int(((ids < 0) | (ids >= len(self.codes))).nonzero()[0, 0])
        raise RuntimeError(
            f"sample {bad} of the batch has no {side} language token of --lslo-langs "
            f"({','.join(self.codes)}) at {self.tokens.where(side)}; prepare the data with those flags "
            f"(or pass lslo_{'src' if side == SOURCE else 'tgt'}_lang in net_input)"
        )
