"""Per-sample language routing: from the batch's language tokens to every LSLo module.

Language ids flow once per forward pass: the :class:`LanguageResolver` reads them from the
batch (or takes them from the caller), the encoder stores them in ``encoder_out`` (so beam
search reorders them with everything else), and the :class:`LanguageRouter` that every
LSLo module of the model shares hands them to the modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

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
    """Maps language tokens to inventory ids; knows where each side's language comes from.

    * source language: ``lslo_src_lang`` given by the caller, else the first non-pad token
      of ``src_tokens`` (``--encoder-langtok src``), else the task's ``--source-lang``;
    * target language: ``lslo_tgt_lang`` given by the caller, else the language token at
      the head of ``prev_output_tokens`` (``--decoder-langtok``; position 1, or 0 with
      ``--lang-tok-replacing-bos-eos``), else the task's ``--target-lang``.  In generation
      the decoder input at step 0 is only ``</s>``: the target language is then taken at
      encoding time, so position 0 is routed exactly as in training.
    """

    def __init__(
        self,
        codes: Sequence[str],
        token_ids: Optional[Sequence[int]],
        vocab_size: int,
        pad: int,
        needs_src: bool,
        needs_tgt: bool,
        src_from_tokens: bool,
        tgt_from_tokens: bool,
        default_src: Optional[int] = None,
        default_tgt: Optional[int] = None,
    ):
        super().__init__()
        self.codes = list(codes)
        self.pad = pad
        self.needs_src, self.needs_tgt = needs_src, needs_tgt
        self.src_from_tokens, self.tgt_from_tokens = src_from_tokens, tgt_from_tokens
        self.default_src, self.default_tgt = default_src, default_tgt
        table = torch.full((vocab_size,), -1, dtype=torch.long)
        if token_ids is not None:
            table[torch.tensor(list(token_ids), dtype=torch.long)] = torch.arange(len(token_ids))
        self.register_buffer("token_to_lang", table, persistent=False)

    # --- per side ---------------------------------------------------------------------
    def _constant(self, value: Optional[int], batch: int, device, what: str) -> Tensor:
        if value is None:
            raise RuntimeError(what)
        return torch.full((batch,), value, dtype=torch.long, device=device)

    def source_ids(self, src_tokens: Tensor, given: Optional[Tensor] = None) -> Optional[Tensor]:
        if not self.needs_src:
            return None
        if given is not None:
            return given.to(src_tokens.device)
        if self.src_from_tokens:
            first = src_tokens.ne(self.pad).long().argmax(dim=1, keepdim=True)  # left or right padding
            return self.token_to_lang[src_tokens.gather(1, first).squeeze(1)]
        return self._constant(
            self.default_src, src_tokens.size(0), src_tokens.device,
            "the source language of the batch is unknown: use --encoder-langtok src, or --source-lang, "
            "or pass lslo_src_lang in net_input",
        )

    def target_ids(
        self, batch: int, device, prev_output_tokens: Optional[Tensor] = None, given: Optional[Tensor] = None
    ) -> Optional[Tensor]:
        if not self.needs_tgt:
            return None
        if given is not None:
            return given.to(device)
        if self.tgt_from_tokens and prev_output_tokens is not None and prev_output_tokens.size(1) >= 2:
            head = self.token_to_lang[prev_output_tokens[:, :2]]
            return torch.where(head[:, 0] >= 0, head[:, 0], head[:, 1])
        return self._constant(
            self.default_tgt, batch, device,
            "the target language of the batch is unknown before decoding: run fairseq-generate with "
            "-t/--target-lang, or pass lslo_tgt_lang (inventory ids) in net_input",
        )

    # --- both sides, checked ----------------------------------------------------------
    def resolve(
        self,
        src_tokens: Tensor,
        prev_output_tokens: Optional[Tensor] = None,
        src_given: Optional[Tensor] = None,
        tgt_given: Optional[Tensor] = None,
    ) -> BatchLanguages:
        src = self.source_ids(src_tokens, src_given)
        tgt = self.target_ids(src_tokens.size(0), src_tokens.device, prev_output_tokens, tgt_given)
        sides = [(name, ids) for name, ids in (("source", src), ("target", tgt)) if ids is not None]
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
        return BatchLanguages(src, tgt, uniform.get("source"), uniform.get("target"))

    def _raise_bad(self, ids: Tensor, side: str) -> None:
        bad = int(((ids < 0) | (ids >= len(self.codes))).nonzero()[0, 0])
        flag = "--encoder-langtok src" if side == "source" else "--decoder-langtok"
        raise RuntimeError(
            f"sample {bad} of the batch has no {side} language token of --lslo-langs "
            f"({','.join(self.codes)}) where LSLo reads it; the data must be prepared with {flag} "
            f"(or pass lslo_{'src' if side == 'source' else 'tgt'}_lang in net_input)"
        )
