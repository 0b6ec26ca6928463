"""Each training sample's target language, for per-language loss reporting.

The language is read by :class:`~fairseq_lslo.langtok.LanguageTokens`, the same reader the
LSLo model routes by (target-side tokens in the target dictionary, at the position fairseq's
langtok options put them), so the metrics and the routing cannot disagree; it works for a plain
transformer too.  Languages and resource groups come from the model's ``lslo_config`` buffer
when there is one, else from the task (``--langs`` / ``--lang-pairs``; no groups then).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..langtok import TARGET, LanguageTokens
from ..errors import LSLoConfigError
from ..modules.spec import CONFIG_KEY, LSLoSpec

WHO = "lslo_label_smoothed_cross_entropy (per-language metrics)"


class TargetLanguages:
    """Maps a batch to target-language ids (``codes`` order); ``groups[i]`` is code i's group."""

    def __init__(self, codes: List[str], groups: Optional[List[str]], tokens: LanguageTokens):
        self.codes = codes
        self.groups = groups
        self.group_names: List[str] = [] if groups is None else list(dict.fromkeys(groups))
        self.tokens = tokens
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
        tokens = LanguageTokens.from_task(task, codes)
        tokens.require(False, True, WHO)
        return cls(codes, groups, tokens)

    def ids(self, sample) -> Tensor:
        """One target-language id per sample of the batch (LongTensor on the batch's device)."""
        net_input = sample["net_input"]
        given = net_input.get("lslo_tgt_lang")
        if given is not None:
            return given.to(net_input["prev_output_tokens"].device)
        src_tokens = net_input["src_tokens"]
        if self.tokens.tgt_table.device != src_tokens.device:
            self.tokens.to(src_tokens.device)  # once: the tables then stay on the batch's device
        ids = self.tokens.target(src_tokens, net_input["prev_output_tokens"])
        if ids is None:
            raise LSLoConfigError(f"{WHO}: the batch's target languages cannot be read; add --decoder-langtok")
        if bool((ids < 0).any()):
            bad = int((ids < 0).nonzero()[0, 0])
            raise RuntimeError(
                f"sample {bad} of the batch has no target language token at {self.tokens.where(TARGET)} "
                f"(known languages: {','.join(self.codes)})"
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
