"""Tiny multi-way parallel corpora that a small transformer learns in seconds.

Each language renders a shared "concept" sequence with its own words (``{lang}{id}``);
languages listed in ``REVERSED`` (``de``, ``ja``) reverse the word order.  The mapping is
deterministic, so a tiny model learns it and its loss visibly goes down.
"""
from __future__ import annotations

import random
from typing import Dict, List, Mapping, Optional, Sequence

REVERSED = {"de", "ja"}
SPLITS = {"train": 240, "valid": 24, "test": 12}

Corpus = Dict[str, Dict[str, List[str]]]  # {split: {lang: [sentence, ...]}}


def render(concepts: Sequence[int], lang: str) -> str:
    """One sentence of ``lang`` for a concept sequence."""
    words = [f"{lang}{c}" for c in concepts]
    return " ".join(reversed(words) if lang in REVERSED else words)


def make_corpus(langs: Sequence[str], n_concepts: int = 12, seed: int = 1,
                splits: Optional[Mapping[str, int]] = None) -> Corpus:
    """{split: {lang: [sentence, ...]}}, multi-way parallel (line i of every language says the same)."""
    rng = random.Random(seed)
    out: Corpus = {}
    for split, n in (splits or SPLITS).items():
        concepts = [[rng.randrange(n_concepts) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        out[split] = {lang: [render(c, lang) for c in concepts] for lang in langs}
    return out
