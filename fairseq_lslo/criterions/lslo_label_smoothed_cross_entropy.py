"""``lslo_label_smoothed_cross_entropy``: fairseq's label-smoothed cross entropy, plus

* loss and nll per target language and per resource group (fairseq metrics ``loss/fr``,
  ``nll_loss/fr``, ``loss/group_high``, ``nll_loss/group_high``), summed over workers and
  normalised once in :meth:`reduce_metrics`;
* in search mode (routing ``learn``): the learned target weight ``w_tgt`` of every layer
  (``mix_tgt/enc01``, mean over the layer's positions; ``w_src = 1 - w_tgt``) and the mean
  routing entropy (``routing_entropy``, nats), and optionally the entropy regulariser
  ``--lslo-routing-entropy-weight``.

With the regulariser at 0 the returned loss is bit-for-bit fairseq's.
(No ``from __future__ import annotations`` here: fairseq reads the config field types at runtime.)
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from ..errors import LSLoConfigError
from ..modules.lslo_linear import LSLoLinear, mix_weights
from ..modules.search import MixSite, mean_entropy, mix_modules
from .target_languages import TargetLanguages

#: logging-output keys (all are sums over samples / forward passes, so workers can add them)
LANG_PREFIX, GROUP_PREFIX, MIX_PREFIX = "lslo_lang", "lslo_group", "lslo_mix"
FIELDS = ("loss", "nll_loss", "ntokens", "size")  # size: the loss denominator (tokens or sentences)
MIX_COUNT, ENTROPY_SUM = "lslo_mix_count", "lslo_entropy_sum"


@dataclass
class LSLoLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    lslo_routing_entropy_weight: float = field(
        default=0.0,
        metadata={
            "help": "search mode only: add WEIGHT * (mean entropy of the softmax src/tgt mixing weights, in "
                    "nats) per target token to the loss. A positive weight pushes every searched position "
                    "towards a hard src or tgt choice; negative keeps the mixture soft. 0 (default): off"
        },
    )
    lslo_log_mix: ChoiceEnum(["layer", "position", "none"]) = field(
        default="layer",
        metadata={"help": "search mode: log the learned target weight per layer (mean over positions), per "
                          "position, or not at all"},
    )


def _key(prefix: str, name: str, what: str) -> str:
    return f"{prefix}:{name}:{what}"


@register_criterion("lslo_label_smoothed_cross_entropy", dataclass=LSLoLabelSmoothedCrossEntropyConfig)
class LSLoLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross entropy with per-language / per-group metrics and routing search extras."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 lslo_routing_entropy_weight=0.0, lslo_log_mix="layer"):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.entropy_weight = float(lslo_routing_entropy_weight)
        self.log_mix = str(lslo_log_mix)
        self._languages: Optional[TargetLanguages] = None
        self._mix: Optional[List[Tuple[MixSite, LSLoLinear]]] = None
        self._prepared_for: Optional[int] = None  # id() of the model the two above describe

    # --- set-up on the first batch (the criterion is built before the model exists) ---------------
    def _prepare(self, model) -> None:
        if self._prepared_for == id(model):
            return
        languages, mix = TargetLanguages.from_task_and_model(self.task, model), mix_modules(model)
        if self.entropy_weight != 0 and not mix:
            raise LSLoConfigError(
                "--lslo-routing-entropy-weight needs a model in search mode (--lslo-encoder-routing learn "
                "and/or --lslo-decoder-routing learn); this model has no searched layer"
            )
        self._languages, self._mix, self._prepared_for = languages, mix, id(model)

    # --- loss -------------------------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        if not reduce:  # per-token losses: nothing to add
            return super().forward(model, sample, reduce=False)
        self._prepare(model)
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        nll_tok, smooth_tok = token_losses(lprobs, target, self.padding_idx)
        eps_i = self.eps / (lprobs.size(-1) - 1)
        nll_loss = nll_tok.sum()
        loss = (1.0 - self.eps - eps_i) * nll_loss + eps_i * smooth_tok.sum()
        bsz = sample["target"].size(0)
        sample_size = bsz if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": bsz,
            "sample_size": sample_size,
        }
        per_sample = torch.stack([
            ((1.0 - self.eps - eps_i) * nll_tok.view(bsz, -1).sum(1) + eps_i * smooth_tok.view(bsz, -1).sum(1)),
            nll_tok.view(bsz, -1).sum(1),
        ]).detach().float()
        logging_output.update(self._per_language(sample, per_sample))
        if self._mix:
            extra, entropy = self._routing(sample_size)
            logging_output.update(extra)
            if entropy is not None:
                loss = loss + entropy
                logging_output["loss"] = loss.data
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = n_correct.item()
            logging_output["total"] = total.item()
        return loss, sample_size, logging_output

    def _per_language(self, sample, per_sample: Tensor) -> Dict[str, float]:
        """Sums of loss, nll, tokens and loss denominator per target language and group.

        Every language (and group) gets its keys in every batch, present or not, so the
        logging outputs of all workers have the same keys and can be summed.
        """
        langs = self._languages
        ids = langs.ids(sample)
        ntok = sample["target"].ne(self.padding_idx).sum(1).float()
        size = torch.ones_like(ntok) if self.sentence_avg else ntok
        rows = torch.cat([per_sample, ntok[None], size[None]])  # 4 x bsz
        by_lang = rows.new_zeros(len(FIELDS), len(langs.codes)).index_add_(1, ids, rows)
        out: Dict[str, float] = {}
        tables = [(LANG_PREFIX, langs.codes, by_lang)]
        if langs.groups is not None:
            by_group = by_lang.new_zeros(len(FIELDS), len(langs.group_names)).index_add_(
                1, langs.lang_to_group.to(by_lang.device), by_lang
            )
            tables.append((GROUP_PREFIX, langs.group_names, by_group))
        for prefix, names, table in tables:
            values = table.tolist()
            for j, name in enumerate(names):
                for i, what in enumerate(FIELDS):
                    out[_key(prefix, name, what)] = values[i][j]
        return out

    def _routing(self, sample_size) -> Tuple[Dict[str, float], Optional[Tensor]]:
        """Mixing-weight sums for logging and, when its weight is set, the entropy term of the loss."""
        logits = [module.lslo_mix for _, module in self._mix]
        with torch.no_grad():
            stacked = torch.stack([t.detach().float() for t in logits])  # positions x 2
            w_tgt = mix_weights(stacked)[:, 1]
            values = torch.cat([w_tgt, mean_entropy(list(stacked)).reshape(1)]).tolist()
        term = None
        if self.entropy_weight != 0:  # differentiable; per unit of sample_size after fairseq's division
            term = self.entropy_weight * mean_entropy(logits) * sample_size
        out: Dict[str, float] = {MIX_COUNT: 1.0, ENTROPY_SUM: values[-1]}
        if self.log_mix != "none":
            sums: Dict[str, List[float]] = {}
            for (site, _), w in zip(self._mix, values[:-1]):
                label = site.label if self.log_mix == "position" else site.label.split(".")[0]
                sums.setdefault(label, []).append(w)
            for label, ws in sums.items():
                out[_key(MIX_PREFIX, label, "w_tgt")] = sum(ws) / len(ws)
        return out, term

    # --- metrics ------------------------------------------------------------------------------------
    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sums: Dict[str, float] = {}
        for log in logging_outputs:
            for k, v in log.items():
                if k.startswith("lslo_"):
                    sums[k] = sums.get(k, 0.0) + float(v)
        log2 = math.log(2)
        for prefix, tag in ((LANG_PREFIX, ""), (GROUP_PREFIX, "group_")):
            names = [k.split(":")[1] for k in sums if k.startswith(prefix + ":") and k.endswith(":ntokens")]
            for name in names:
                ntok, size = sums[_key(prefix, name, "ntokens")], sums[_key(prefix, name, "size")]
                if ntok <= 0:
                    continue  # language absent from this batch: no value (not 0, not nan)
                metrics.log_scalar(f"loss/{tag}{name}", sums[_key(prefix, name, "loss")] / size / log2, size,
                                   round=3)
                metrics.log_scalar(f"nll_loss/{tag}{name}", sums[_key(prefix, name, "nll_loss")] / ntok / log2,
                                   ntok, round=3)
        count = sums.get(MIX_COUNT, 0.0)
        if count > 0:
            metrics.log_scalar("routing_entropy", sums[ENTROPY_SUM] / count, round=3)
            for k, v in sums.items():
                if k.startswith(MIX_PREFIX + ":"):
                    metrics.log_scalar(f"mix_tgt/{k.split(':')[1]}", v / count, round=3)


def token_losses(lprobs: Tensor, target: Tensor, pad: int) -> Tuple[Tensor, Tensor]:
    """Per-token nll and smoothing terms (N x 1 each, 0 at padding), as fairseq computes them."""
    target = target.unsqueeze(-1)
    nll = -lprobs.gather(dim=-1, index=target)
    smooth = -lprobs.sum(dim=-1, keepdim=True)
    pad_mask = target.eq(pad)
    nll.masked_fill_(pad_mask, 0.0)
    smooth.masked_fill_(pad_mask, 0.0)
    return nll, smooth
