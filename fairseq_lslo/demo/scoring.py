"""BLEU of every direction with sacrebleu, averaged per target language, resource group and overall."""
from __future__ import annotations

import os
from statistics import mean
from typing import Dict, List, Sequence


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def direction_bleu(hyp_dir: str, ref_dir: str, langs: Sequence[str]) -> Dict[str, float]:
    """{'src-tgt': corpus BLEU} against ``ref_dir/finetune.test.{tgt}`` (sacrebleu's 13a tokens)."""
    import sacrebleu

    scores = {}
    for s in langs:
        for t in langs:
            if s == t:
                continue
            hyps = read_lines(os.path.join(hyp_dir, f"{s}-{t}.hyp"))
            refs = read_lines(os.path.join(ref_dir, f"finetune.test.{t}"))
            if len(hyps) != len(refs):
                raise RuntimeError(f"{hyp_dir}/{s}-{t}.hyp has {len(hyps)} lines, the reference {len(refs)}")
            scores[f"{s}-{t}"] = round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    return scores


def aggregate(directions: Dict[str, float], groups: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """Means over directions: per target language, per target resource group, and overall."""
    by_lang: Dict[str, List[float]] = {}
    for pair, score in directions.items():
        by_lang.setdefault(pair.split("-")[1], []).append(score)
    by_group: Dict[str, List[float]] = {}
    for lang, scores in by_lang.items():
        by_group.setdefault(groups[lang], []).extend(scores)
    return {
        "languages": {lang: round(mean(v), 2) for lang, v in by_lang.items()},
        "groups": {g: round(mean(v), 2) for g, v in by_group.items()},
        "overall": round(mean(directions.values()), 2),
    }
