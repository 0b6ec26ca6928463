"""Each training sample's target language, for per-language loss reporting.

The language is read from the sample's tokens, by the same rule the LSLo model routes by
(the language token at the head of ``prev_output_tokens``, put there by
``--decoder-langtok``), so it works for a plain transformer too.  Languages and resource
groups come from the model's ``lslo_config`` buffer when there is one, else from the task
(``--langs`` / ``--lang-pairs``; no groups then).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..languages import LSLoConfigError, language_token
from ..modules.spec import CONFIG_KEY, LSLoSpec


class TargetLanguages:
    """Maps a batch to target-language ids (``codes`` order); ``groups[i]`` is code i's group."""

    def __init__(self, codes: List[str], groups: Optional[List[str]], token_to_lang: Optional[Tensor],
                 constant: Optional[int]):
        self.codes = codes
        self.groups = groups
        self.group_names: List[str] = [] if groups is None else list(dict.fromkeys(groups))
        self.token_to_lang = token_to_lang
        self.constant = constant
        if groups is not None:
            index = {g: i for i, g in enumerate(self.group_names)}
            self.lang_to_group = torch.tensor([index[g] for g in groups], dtype=torch.long)

    @classmethod
    def from_task_and_model(cls, task, model: nn.Module) -> "TargetLanguages":
        targs = getattr(task, "args", None) or getattr(task, "cfg", None)
        spec = model_spec(model)
        if spec is not None:
            codes, groups = spec.codes, [g for _, g in spec.languages]
        else:
            codes, groups = task_languages(task, targs), None
        dictionary = task.target_dictionary
        if getattr(targs, "decoder_langtok", False):
            style = getattr(targs, "lang_tok_style", "multilingual")
            table = torch.full((len(dictionary),), -1, dtype=torch.long)
            for i, code in enumerate(codes):
                idx = dictionary.index(language_token(code, style))
                if idx == dictionary.unk():
                    raise LSLoConfigError(
                        f"lslo_label_smoothed_cross_entropy: target language {code!r} has no token "
                        f"{language_token(code, style)} in the dictionary"
                    )
                table[idx] = i
            return cls(codes, groups, table, None)
        target = getattr(targs, "target_lang", None)
        if target is not None and target in codes:
            return cls(codes, groups, None, codes.index(target))
        raise LSLoConfigError(
            "lslo_label_smoothed_cross_entropy needs each sample's target language: use the multilingual "
            "task with --decoder-langtok, or a bilingual task with --target-lang (listed in --lslo-langs)"
        )

    def ids(self, sample) -> Tensor:
        """One target-language id per sample of the batch (LongTensor on the batch's device)."""
        prev = sample["net_input"]["prev_output_tokens"]
        if self.token_to_lang is None:
            return torch.full((prev.size(0),), self.constant, dtype=torch.long, device=prev.device)
        if self.token_to_lang.device != prev.device:
            self.token_to_lang = self.token_to_lang.to(prev.device)
        head = self.token_to_lang[prev[:, :2]]
        ids = torch.where(head[:, 0] >= 0, head[:, 0], head[:, 1])
        if bool((ids < 0).any()):
            bad = int((ids < 0).nonzero()[0, 0])
            raise RuntimeError(
                f"sample {bad} of the batch has no target language token at the head of prev_output_tokens; "
                f"prepare the data with --decoder-langtok (known languages: {','.join(self.codes)})"
            )
        return ids


def model_spec(model: nn.Module) -> Optional[LSLoSpec]:
    """The LSLo configuration stored in the model (through any DDP wrapper), or None."""
    for name, buf in model.named_buffers():
        if name == CONFIG_KEY or name.endswith("." + CONFIG_KEY):
            return LSLoSpec.from_tensor(buf)
    return None


def task_languages(task, targs) -> List[str]:
    langs = getattr(task, "langs", None)
    if langs:
        return list(langs)
    pairs = getattr(targs, "lang_pairs", None) or []
    if isinstance(pairs, str):
        pairs = pairs.split(",")
    codes: List[str] = []
    for pair in pairs:
        for code in pair.split("-"):
            if code and code not in codes:
                codes.append(code)
    for attr in ("source_lang", "target_lang"):
        code = getattr(targs, attr, None)
        if code and code not in codes:
            codes.append(code)
    if not codes:
        raise LSLoConfigError(
            "lslo_label_smoothed_cross_entropy: the task names no languages (--lang-pairs, --langs or "
            "--source-lang/--target-lang)"
        )
    return codes
