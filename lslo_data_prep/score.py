"""Score fairseq-generate outputs per direction: spBLEU and chrF++ with sacrebleu.

    python -m lslo_data_prep.score --data DATA/bin --raw DATA/raw --gen-dir EVAL/gen --out-dir EVAL

Reads ``GEN_DIR/{src}-{tgt}.gen`` (fairseq-generate output with ``--remove-bpe sentencepiece``)
and the plain references ``RAW/test.{tgt}``.  spBLEU uses sacrebleu's ``flores101`` tokenizer,
whose SentencePiece model sacrebleu downloads on first use; with ``--spm-model FILE`` (no
network) hypotheses and references are instead encoded with that local model and scored with
``--tokenize none``.  Writes ``scores.tsv`` (one row per direction), ``scores.md`` (averages
by source group x target group) and ``heatmap.png`` (N x N spBLEU).  Hypothesis files recorded
by lslo-evaluate must all come from one model (``--checkpoint``: that one).  A direction scored
before from the same hypothesis, reference and tokenizer files (by sha256) is not scored again
(``scores.cache.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional

from lslo_common.atomic import atomic_write_text
from lslo_common.langset_file import LangRow
from lslo_common.runner import run_tool

from .fsutil import sha256_file
from .hypotheses import check_same_model, describe, model_identity
from .langsets import DataPrepError, directions, read_langset


def read_hypotheses(path: str) -> List[str]:
    """Detokenized hypotheses (``D-`` lines) of a fairseq-generate log, in sentence order."""
    hyps: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("D-"):
                head, _score, *text = line.rstrip("\n").split("\t")
                hyps[int(head[2:])] = text[0] if text else ""
    if not hyps:
        raise DataPrepError(f"{path}: no hypotheses (no D- lines): did fairseq-generate fail?")
    missing = [i for i in range(max(hyps) + 1) if i not in hyps]
    if missing:  # never score an empty string in place of a sentence fairseq-generate skipped
        raise DataPrepError(
            f"{path}: no hypothesis for {len(missing)} sentence(s) (ids {missing[:8]}): fairseq-generate "
            f"skipped them (decode with --required-batch-size-multiple 1)"
        )
    return [hyps[i] for i in range(max(hyps) + 1)]


class Scorer:
    def __init__(self, spm_model: Optional[str]):
        import sacrebleu

        self.sacrebleu = sacrebleu
        self.sp = None
        if spm_model:
            import sentencepiece as spm

            if not os.path.isfile(spm_model):
                raise DataPrepError(f"--spm-model: {spm_model} does not exist")
            self.sp = spm.SentencePieceProcessor(model_file=spm_model)

    def spbleu(self, hyps: List[str], refs: List[str]) -> float:
        if self.sp is not None:
            enc = lambda xs: [" ".join(p) for p in self.sp.encode(xs, out_type=str)]  # noqa: E731
            return self.sacrebleu.corpus_bleu(enc(hyps), [enc(refs)], tokenize="none").score
        try:
            return self.sacrebleu.corpus_bleu(hyps, [refs], tokenize="flores101").score
        except Exception as e:  # sacrebleu downloads its SentencePiece model on first use
            raise DataPrepError(
                f"sacrebleu could not use its flores101 tokenizer ({type(e).__name__}: {e}); on a machine without "
                f"internet pass a local SentencePiece model: --spm-model FILE (SCORE_SPM_MODEL=FILE in the recipes)"
            ) from None

    def chrfpp(self, hyps: List[str], refs: List[str]) -> float:
        return self.sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score

    def check(self) -> None:
        """Fail now, not after hours of decoding, if spBLEU cannot be computed (e.g. no download possible)."""
        self.spbleu(["a b"], ["a b"])


def read_cache(path: str) -> Dict[str, dict]:
    """Per-direction scores of earlier runs, keyed by the sha256 of the files they came from."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def reference_path(raw: str, split: str, tgt: str) -> str:
    return os.path.join(raw, f"{split}.{tgt}")


def check_directions(data: str, raw: str, pairs: List[str], split: str = "test",
                     langs: Optional[List[LangRow]] = None, where: Optional[str] = None) -> Dict[str, str]:
    """Every direction uses languages of ``langs`` (default: ``data/langs.tsv``; ``where`` names their
    source in errors) and has its references; returns the groups."""
    if langs is None:
        langs, where = read_langset(os.path.join(data, "langs.tsv")), f"{data}/langs.tsv"
    group = {r.code: r.group for r in langs}
    for pair in pairs:
        src, _, tgt = pair.partition("-")
        if src not in group or tgt not in group:
            raise DataPrepError(f"direction {pair!r} uses a language outside {where} ({', '.join(group)})")
        ref = reference_path(raw, split, tgt)
        if not os.path.isfile(ref):
            raise DataPrepError(f"{ref} is missing: no references for direction {pair}")
    return group


def group_table(rows: List[dict], groups: List[str], metric: str) -> List[str]:
    """Markdown table: mean ``metric`` per source group (rows) x target group (columns), plus 'all'."""
    lines = [f"| {metric}: source \\ target | " + " | ".join(groups) + " | all |",
             "|---" * (len(groups) + 2) + "|"]
    for g in groups + ["all"]:
        cells = []
        for h in groups + ["all"]:
            xs = [r[metric] for r in rows
                  if (g == "all" or r["src_group"] == g) and (h == "all" or r["tgt_group"] == h)]
            cells.append(f"{sum(xs) / len(xs):.2f} ({len(xs)})" if xs else "-")
        lines.append(f"| **{g}** | " + " | ".join(cells) + " |")
    return lines


def heatmap(rows: List[dict], langs: List[LangRow], path: str) -> None:
    import logging

    # fairseq/hydra leave the root logger at DEBUG: matplotlib's import and font search would log ~230 lines
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = [r.code for r in langs]
    grid = [[math.nan] * len(codes) for _ in codes]
    for r in rows:
        grid[codes.index(r["src"])][codes.index(r["tgt"])] = r["spBLEU"]
    size = max(4.0, 0.35 * len(codes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(codes)), labels=codes, rotation=90)
    ax.set_yticks(range(len(codes)), labels=codes)
    ax.set_xlabel("target language")
    ax.set_ylabel("source language")
    ax.set_title("spBLEU per direction")
    if len(codes) <= 16:
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def score(data: str, raw: str, gen_dir: str, out_dir: str, spm_model: Optional[str], pairs: Optional[List[str]],
          split: str = "test", expect: Optional[dict] = None, langs: Optional[List[LangRow]] = None,
          where: Optional[str] = None) -> List[dict]:
    """Score every direction and write the tables; ``expect``: the model identity every hypothesis file
    must record (see lslo_data_prep.hypotheses); ``langs``: the language groups (default: ``data/langs.tsv``;
    ``where`` names their source).  Everything is checked before anything is written."""
    if langs is None:
        langs, where = read_langset(os.path.join(data, "langs.tsv")), f"{data}/langs.tsv"
    wanted = pairs or directions(langs)
    group = check_directions(data, raw, wanted, split, langs, where)
    scorer = Scorer(spm_model)
    gens = [os.path.join(gen_dir, f"{pair}.gen") for pair in wanted]
    for pair, gen in zip(wanted, gens):
        if not os.path.isfile(gen):
            raise DataPrepError(f"{gen} is missing: direction {pair} was not decoded")
    model = check_same_model(gens, expect)
    cache_path = os.path.join(out_dir, "scores.cache.json")
    cache = read_cache(cache_path)
    tokenizer_id = f"spm:{sha256_file(spm_model)}" if spm_model else "sacrebleu:flores101"
    rows = []
    for pair, gen in zip(wanted, gens):
        src, tgt = pair.split("-")
        key = {"gen": sha256_file(gen), "ref": sha256_file(reference_path(raw, split, tgt)), "tokenizer": tokenizer_id}
        cached = cache.get(pair)
        if cached is not None and cached.get("key") == key:  # scored before from exactly these files
            metrics = cached["metrics"]
        else:
            refs = open(reference_path(raw, split, tgt), encoding="utf-8").read().splitlines()
            hyps = read_hypotheses(gen)
            if len(hyps) != len(refs):
                raise DataPrepError(f"{gen}: {len(hyps)} hypotheses for {len(refs)} references")
            metrics = {"spBLEU": scorer.spbleu(hyps, refs), "chrF++": scorer.chrfpp(hyps, refs), "sentences": len(refs)}
            cache[pair] = {"key": key, "metrics": metrics}
        rows.append({"src": src, "tgt": tgt, "src_group": group[src], "tgt_group": group[tgt], **metrics})
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True) + "\n")
    tsv = ["src\ttgt\tsrc_group\ttgt_group\tspBLEU\tchrF++\tsentences"]
    tsv += [f"{r['src']}\t{r['tgt']}\t{r['src_group']}\t{r['tgt_group']}\t{r['spBLEU']:.2f}\t{r['chrF++']:.2f}\t{r['sentences']}"
            for r in rows]
    atomic_write_text(os.path.join(out_dir, "scores.tsv"), "\n".join(tsv) + "\n")
    groups = []
    for r in langs:
        if r.group not in groups:
            groups.append(r.group)
    tokenizer = f"local SentencePiece model {spm_model}, --tokenize none" if spm_model else "sacrebleu flores101"
    md = [f"# FLORES-101 {split}: {len(rows)} directions", "",
          f"spBLEU ({tokenizer}) and chrF++ (word order 2), averaged over directions; (n) = directions.", ""]
    if model is not None:  # which model decoded every direction (e.g. checkpoint_last.pt of a pruning run)
        md[1:1] = ["", f"Decoded by: {describe(model)}."]
    md += group_table(rows, groups, "spBLEU") + [""] + group_table(rows, groups, "chrF++") + [""]
    atomic_write_text(os.path.join(out_dir, "scores.md"), "\n".join(md))
    heatmap(rows, langs, os.path.join(out_dir, "heatmap.png"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared fairseq data folder (OUT/bin, holds langs.tsv)")
    p.add_argument("--raw", required=True, help="plain-text references folder (OUT/raw)")
    p.add_argument("--gen-dir", required=True, help="folder of {src}-{tgt}.gen fairseq-generate outputs")
    p.add_argument("--out-dir", required=True, help="receives scores.tsv, scores.md, heatmap.png")
    p.add_argument("--spm-model", default=None,
                   help="score spBLEU with this local SentencePiece model (--tokenize none) instead of sacrebleu's "
                        "flores101 model, which needs a download")
    p.add_argument("--pairs", default=None, help="comma-separated directions (default: all of langs.tsv)")
    p.add_argument("--split", default="test", help="reference split in --raw (default: test)")
    p.add_argument("--checkpoint", default=None,
                   help="refuse hypothesis files not recorded as decoded from this checkpoint (by content)")
    p.add_argument("--adapters", default=None, help="with --checkpoint: the --lslo-adapters file it was decoded with")
    a = p.parse_args(argv)
    return run_tool("lslo_data_prep.score", lambda: score_and_print(a))


def score_and_print(a: argparse.Namespace) -> int:
    expect = model_identity({"checkpoint": a.checkpoint, "adapters": a.adapters}) if a.checkpoint else None
    rows = score(a.data, a.raw, a.gen_dir, a.out_dir, a.spm_model, a.pairs.split(",") if a.pairs else None, a.split,
                 expect)
    print(open(os.path.join(a.out_dir, "scores.md"), encoding="utf-8").read())
    print(f"{len(rows)} directions scored -> {a.out_dir}/scores.tsv, scores.md, heatmap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
