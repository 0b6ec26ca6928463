"""``Translator``: one model load, every direction, mixed directions in shared batches.

The LSLo model routes each sample by its own languages inside one forward pass (the ids ride
in ``encoder_out``, see ``modules/routing.py``), so a batch may mix directions: the source
language token is prepended per sample, the target language token is forced per sample as
fairseq's ``--decoder-langtok`` does, and the inventory ids are passed as ``lslo_src_lang`` /
``lslo_tgt_lang``.  Decoding is fairseq's own ``SequenceGenerator``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import LSLoConfigError, LSLoFileError
from ..langtok import lang_token
from . import loading


Langs = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Hypothesis:
    """One translation: detokenized ``text``, fairseq's length-normalised log-probability ``score``
    (natural log; fairseq-generate prints it in base 2), and the target ``pieces`` (SentencePiece)."""

    text: str
    score: float
    pieces: str


class Translator:
    """A loaded fairseq translation model that serves every direction of its languages."""

    def __init__(self, task, model, spm_model: str, languages: Sequence[str], merged_for: Optional[str] = None,
                 device: Optional[Union[str, torch.device]] = None, half: bool = False, name: str = "the model"):
        import sentencepiece as spm

        if not isinstance(half, bool):
            raise LSLoConfigError(f"half: expected True or False, got {half!r}")
        self.task, self.model, self.name = task, model, name
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.half = half
        self.model.eval().to(self.device)
        if half:
            self.model.half()
        self.sp = spm.SentencePieceProcessor(model_file=spm_model)
        self.dictionary = task.target_dictionary
        self.src_dict = task.source_dictionary
        targs = task.args
        if getattr(targs, "lang_tok_replacing_bos_eos", False):
            raise LSLoConfigError(f"{name}: --lang-tok-replacing-bos-eos models are not supported by the Translator")
        encoder_spec, decoder_spec = targs.langtoks["main"]
        self.encoder_spec, self.decoder_spec = encoder_spec or None, decoder_spec or None
        self.style = getattr(targs, "lang_tok_style", "multilingual") or "multilingual"
        self.is_lslo = hasattr(model, "lslo_spec")
        inventory = list(model.lslo_spec.codes) if self.is_lslo else None
        self._languages = sorted(c for c in languages if inventory is None or c in inventory)
        self.merged_for = merged_for
        self._generators: Dict[Tuple, object] = {}
        # every language token is stripped from outputs (the task's own generator strips only its -t one)
        self._strip = {self._lang_index(c, self.decoder_spec or "tgt") for c in self._languages}

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, data: Optional[str] = None, spm: Optional[str] = None,
                        device: Optional[Union[str, torch.device]] = None, half: bool = False,
                        adapters: Optional[str] = None) -> "Translator":
        """Load an LSLo, merged or plain fairseq checkpoint (``adapters``: an lslo-export file for a plain base).

        ``data``: the fairseq data directory with the dictionaries; ``spm``: the SentencePiece model.
        Where not given they are found beside the checkpoint, or in the data directory it was trained on.
        """
        from fairseq import tasks

        from ..checkpoint_io import load_checkpoint

        if not isinstance(half, bool):
            raise LSLoConfigError(f"half: expected True or False, got {half!r}")
        if not os.path.isfile(path):
            raise LSLoFileError(f"{path}: no such checkpoint file")
        state = load_checkpoint(path)  # CheckpointError names a file that is not a readable checkpoint
        cfg = loading.checkpoint_config(state)
        cfg_task, cfg_model = loading.as_dict(cfg.get("task")), loading.as_dict(cfg.get("model"))
        merged = loading.merged_direction(state)
        if adapters is not None and loading.is_lslo_state(state["model"]):
            raise LSLoConfigError(f"adapters={adapters}: {path} is an LSLo checkpoint already; give a plain base checkpoint")
        here_pairs = loading.pairs_file_beside(path)
        pairs = loading.read_pairs(cfg_task, here_pairs)
        langs = loading.language_list(cfg_task, pairs, here_pairs)
        files = loading.find_files(path, cfg_task, langs, data, spm)
        task = tasks.setup_task(loading.task_namespace(cfg_task, files, langs, [merged] if merged else pairs))
        loading.check_vocabulary(task, state["model"], langs, path)
        model = task.build_model(loading.model_namespace(cfg_model, adapters))
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.get("model"))
        return cls(task, model, files.spm, langs, merged_for=merged, device=device, half=half, name=path)

    # --- what it serves ------------------------------------------------------------------
    @property
    def languages(self) -> List[str]:
        """Language codes it translates from and into."""
        if self.merged_for:
            return sorted(set(self.merged_for.split("-")))
        return list(self._languages)

    @property
    def directions(self) -> List[str]:
        """``src-tgt`` directions it serves: the merged one, or every ordered pair of its languages."""
        if self.merged_for:
            return [self.merged_for]
        return [f"{s}-{t}" for s in self._languages for t in self._languages if s != t]

    def check_direction(self, src: str, tgt: str, where: str = "") -> None:
        """An error naming the valid languages (or the direction a merged model was made for)."""
        for role, code in (("source", src), ("target", tgt)):
            if code not in self._languages:
                raise LSLoConfigError(
                    f"unknown {role} language {code!r}{where}: {self.name} serves {', '.join(self._languages)}")
        if src == tgt:
            raise LSLoConfigError(f"source and target language are both {src!r}{where}")
        if self.merged_for and f"{src}-{tgt}" != self.merged_for:
            raise LSLoConfigError(
                f"{self.name} was merged for {self.merged_for} (lslo-merge) and translates only that direction; "
                f"asked for {src}-{tgt}{where}: load the LSLo checkpoint (or merge that direction) instead")

    # --- tokens --------------------------------------------------------------------------
    def _lang_index(self, code: str, spec: str) -> int:
        symbol = lang_token(code, self.style, spec)
        idx = self.src_dict.index(symbol)
        if idx == self.src_dict.unk():
            raise LSLoConfigError(f"{self.name}: no language token {symbol} in the dictionary")
        return idx

    def encode(self, text: str, src: str, tgt: str) -> Tensor:
        """The source as the model sees it: ``__src__ pieces </s>`` (``--encoder-langtok``)."""
        if not isinstance(text, str):
            raise LSLoConfigError(f"texts: expected strings, got {type(text).__name__}")
        pieces = " ".join(self.sp.encode(text, out_type=str))
        tokens = self.src_dict.encode_line(pieces, add_if_not_exist=False, append_eos=True).long()
        if self.encoder_spec:
            lang = src if self.encoder_spec.startswith("src") else tgt
            tokens = torch.cat([tokens.new_tensor([self._lang_index(lang, self.encoder_spec)]), tokens])
        return tokens

    def count_tokens(self, text: str, src: str) -> int:
        """Source tokens the model sees for ``text`` (language token and ``</s>`` included)."""
        if src not in self._languages:
            raise LSLoConfigError(f"unknown source language {src!r}: {self.name} serves {', '.join(self._languages)}")
        return int(self.encode(text, src, src).numel())

    # --- translation ---------------------------------------------------------------------
    def translate(self, texts: Sequence[str], src: Langs, tgt: Langs, beam: int = 5, nbest: int = 1,
                  return_scores: bool = False, max_tokens: Optional[int] = None, *,
                  max_sentences: Optional[int] = None, max_len_a: float = 0.0, max_len_b: int = 200,
                  lenpen: float = 1.0) -> Union[List[str], List[List[Hypothesis]]]:
        """Translate ``texts``; ``src``/``tgt``: one code, or one per text (directions share batches).

        Returns the best translation per text, in input order; with ``nbest > 1`` or ``return_scores``
        a list of ``nbest`` :class:`Hypothesis` per text.  ``max_tokens`` bounds a batch's padded
        source tokens (default 4096); generation flags mean what fairseq-generate's do.
        """
        if isinstance(texts, str):
            raise LSLoConfigError("texts: expected a list of strings, got one string (wrap it in a list)")
        texts = list(texts)
        srcs, tgts = self._per_text(src, len(texts), "src"), self._per_text(tgt, len(texts), "tgt")
        if not 1 <= nbest <= beam:
            raise LSLoConfigError(f"nbest must be between 1 and beam ({beam}), got {nbest}")
        for i, (s, t) in enumerate(zip(srcs, tgts)):
            self.check_direction(s, t, f" (text {i})")
        generator = self._generator(beam, nbest, max_len_a, max_len_b, lenpen)
        sources = [self.encode(text, s, t) for text, s, t in zip(texts, srcs, tgts)]
        results: List[Optional[List[Hypothesis]]] = [None] * len(texts)
        for batch in self._batches(sources, max_tokens or 4096, max_sentences or 256):
            sample, prefix = self._collate(batch, sources, srcs, tgts)
            with torch.no_grad():
                hypos = generator.generate([self.model], sample, prefix_tokens=prefix)
            for i, per_text in zip(batch, hypos):
                results[i] = [self._hypothesis(h) for h in per_text[:nbest]]
        if nbest > 1 or return_scores:
            return results  # type: ignore[return-value]
        return [r[0].text for r in results]  # type: ignore[index]

    def _per_text(self, value: Langs, n: int, name: str) -> List[str]:
        if isinstance(value, str):
            return [value] * n
        if not isinstance(value, (list, tuple)):
            raise LSLoConfigError(f"{name}: one language code, or a list of one per text; got {value!r}")
        values = list(value)
        if len(values) != n:
            raise LSLoConfigError(f"{name}: one language code, or one per text ({n}); got {len(values)}")
        return values

    def _generator(self, beam: int, nbest: int, max_len_a: float, max_len_b: int, lenpen: float):
        key = (beam, nbest, max_len_a, max_len_b, lenpen)
        if key not in self._generators:
            from fairseq.dataclass.configs import GenerationConfig
            from fairseq.tasks import FairseqTask

            gen = dataclasses.replace(GenerationConfig(), beam=beam, nbest=nbest, max_len_a=max_len_a,
                                      max_len_b=max_len_b, lenpen=lenpen)
            self._generators[key] = FairseqTask.build_generator(
                self.task, [self.model], gen, extra_gen_cls_kwargs={"symbols_to_strip_from_output": self._strip})
        return self._generators[key]

    @staticmethod
    def _batches(sources: List[Tensor], max_tokens: int, max_sentences: int) -> List[List[int]]:
        """Indices grouped by source length, each batch's padded size within the bounds."""
        order = sorted(range(len(sources)), key=lambda i: (sources[i].numel(), i))
        batches: List[List[int]] = []
        current: List[int] = []
        for i in order:
            longest = sources[i].numel()  # ascending order: the newest is the longest
            if current and (longest * (len(current) + 1) > max_tokens or len(current) >= max_sentences):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _collate(self, batch: List[int], sources: List[Tensor], srcs: List[str], tgts: List[str]):
        from fairseq.data import data_utils

        tokens = [sources[i] for i in batch]
        net_input = {
            "src_tokens": data_utils.collate_tokens(tokens, self.src_dict.pad(), self.src_dict.eos(),
                                                    left_pad=True).to(self.device),
            "src_lengths": torch.tensor([t.numel() for t in tokens], device=self.device),
        }
        if self.is_lslo:
            net_input["lslo_src_lang"] = self.model.language_ids([srcs[i] for i in batch], self.device)
            net_input["lslo_tgt_lang"] = self.model.language_ids([tgts[i] for i in batch], self.device)
        prefix = None
        if self.decoder_spec:
            prefix = torch.tensor([[self._lang_index(tgts[i], self.decoder_spec)] for i in batch], device=self.device)
        return {"net_input": net_input, "id": torch.tensor(batch)}, prefix

    def _hypothesis(self, hypo) -> Hypothesis:
        from fairseq.data import data_utils

        pieces = self.dictionary.string(hypo["tokens"].int().cpu(), extra_symbols_to_ignore=set(self._strip))
        return Hypothesis(data_utils.post_process(pieces, "sentencepiece"), float(hypo["score"]), pieces)
