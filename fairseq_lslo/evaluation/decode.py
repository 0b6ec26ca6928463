"""Decode many directions with one model: mixed-direction batches, one direction finished after another.

The sentences of all directions are laid out direction by direction, each direction sorted by
length (ascending and descending in turn, so that the long end of one direction meets the long
end of the next), and packed into batches by ``--max-tokens`` / ``--batch-size``.  A batch may
hold two directions where one ends and the next begins: the model routes every sample by its
own languages (source from its source token, target passed as ``lslo_tgt_lang``) and beam
search forces each sample's target language token as its prefix, as fairseq-generate's
``--decoder-langtok`` does.  A direction is handed to ``on_done`` as soon as its last sentence is
decoded, so a killed run loses at most the direction in flight.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import torch

from fairseq import utils

from ..errors import LSLoConfigError


@dataclass
class Direction:
    """One translation direction: its test dataset (as the multilingual task loads it) and target token."""

    pair: str
    dataset: object  # a fairseq dataset of the multilingual task (source/target langtoks applied)
    tgt_token: int
    lines: Dict[int, List[str]] = field(default_factory=dict)  # sentence id -> its fairseq-generate lines

    @property
    def src(self) -> str:
        return self.pair.split("-")[0]

    @property
    def tgt(self) -> str:
        return self.pair.split("-")[1]

    def __len__(self) -> int:
        return len(self.dataset)


def load_directions(task, subset: str, pairs: Sequence[str]) -> List[Direction]:
    """The ``subset`` datasets of ``pairs``, loaded the way the task loads them for fairseq-generate."""
    manager = task.data_manager
    manager.lang_pairs = list(pairs)  # dictionaries are already built: only which datasets to load changes
    loaded, params = manager.load_split_datasets(subset, False, epoch=1, combine=False)
    by_pair = {f"{p['src']}-{p['tgt']}": dataset for p, (_, dataset) in zip(params, loaded)}
    _, tgt_spec = task.args.langtoks["main"]
    return [Direction(pair, by_pair[pair], manager.get_decoder_langtok(pair.split("-")[1], tgt_spec)) for pair in pairs]


def token_counts(dataset, n: int):
    """Per sentence: max(source, target) tokens, the size fairseq batches by."""
    import numpy as np

    vec = getattr(dataset, "num_tokens_vec", None)
    try:
        return np.asarray(vec(np.arange(n))) if vec is not None else np.array([dataset.num_tokens(i) for i in range(n)])
    except (NotImplementedError, AttributeError):
        return np.array([dataset.num_tokens(i) for i in range(n)])


def plan_batches(directions: Sequence[Direction], max_tokens: Optional[int], max_sentences: Optional[int],
                 max_positions: Tuple[int, int]) -> List[List[Tuple[int, int]]]:
    """Batches of (direction index, sentence id), directions in order, each sorted by length."""
    import numpy as np

    batches: List[List[Tuple[int, int]]] = []
    current: List[Tuple[int, int]] = []
    widest = 0
    for k, d in enumerate(directions):
        sizes = token_counts(d.dataset, len(d))
        order = np.argsort(sizes, kind="mergesort")
        if k % 2:
            order = order[::-1]
        for i in order.tolist():
            src_len, tgt_len = d.dataset.size(i)
            if src_len > max_positions[0] or (tgt_len or 0) > max_positions[1]:
                raise LSLoConfigError(f"direction {d.pair}: sentence {i} has {src_len} source / {tgt_len} target "
                                      f"tokens, more than the model's {max_positions[0]} / {max_positions[1]} positions")
            n = int(sizes[i])
            if max_tokens is not None and n > max_tokens:
                raise LSLoConfigError(f"direction {d.pair}: sentence {i} has {n} tokens, "
                                      f"more than --max-tokens {max_tokens}")
            wide = max(widest, n)
            full = (max_tokens is not None and (len(current) + 1) * wide > max_tokens) or \
                   (max_sentences is not None and len(current) + 1 > max_sentences)
            if current and full:
                batches.append(current)
                current, wide = [], n
            current.append((k, i))
            widest = wide
    if current:
        batches.append(current)
    return batches


class Progress:
    """Sentences decoded of all, rate and ETA: one updated line on a terminal, a line every ``interval`` s otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, interval: float = 30.0):
        self.total, self.stream, self.interval = total, stream, interval
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def text(self, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        pct = 100.0 * self.done / max(self.total, 1)
        width = 24
        bar = "#" * int(width * self.done / max(self.total, 1))
        return (f"[{bar:<{width}}] {self.done}/{self.total} sentences ({pct:.1f}%) {rate:.1f} sent/s "
                f"elapsed {_hms(elapsed)} ETA {_hms(eta)}" + (f" | {note}" if note else ""))

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty and now - self.last >= 0.2:
            self.stream.write("\r" + self.text(note) + "\033[K")
            self.stream.flush()
            self.last = now
        elif not self.tty and now - self.last >= self.interval:
            self.stream.write(self.text(note) + "\n")
            self.stream.flush()
            self.last = now

    def message(self, text: str) -> None:
        """A line of its own (e.g. a finished direction) without breaking the bar."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write(("\r" if self.tty else "") + self.text() + ("\033[K\n" if self.tty else "\n"))
        self.stream.flush()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class OutputFormat:
    """The S-/T-/H-/D-/P- lines fairseq-generate prints for a sentence, from the same fairseq helpers."""

    def __init__(self, task, generator, post_process: Optional[str], nbest: int, decode_fn: Callable[[str], str]):
        self.src_dict, self.tgt_dict = task.source_dictionary, task.target_dictionary
        self.post_process, self.nbest, self.decode_fn = post_process, nbest, decode_fn
        # fairseq-generate strips the generator's symbols plus the direction's target language token
        self.strip = set(getattr(generator, "symbols_to_strip_from_output", {generator.eos}))

    def lines(self, sample_id: int, src_tokens, target_tokens, hypos, tgt_token: int) -> List[str]:
        strip = self.strip | {tgt_token}
        src_str = self.decode_fn(self.src_dict.string(utils.strip_pad(src_tokens, self.tgt_dict.pad()),
                                                      self.post_process))
        out = [f"S-{sample_id}\t{src_str}"]
        if target_tokens is not None:
            tokens = utils.strip_pad(target_tokens, self.tgt_dict.pad()).int().cpu()
            target_str = self.tgt_dict.string(tokens, self.post_process, escape_unk=True,
                                              extra_symbols_to_ignore=strip)
            out.append(f"T-{sample_id}\t{self.decode_fn(target_str)}")
        for hypo in hypos[: self.nbest]:
            _, hypo_str, _ = utils.post_process_prediction(
                hypo_tokens=hypo["tokens"].int().cpu(), src_str=src_str, alignment=hypo["alignment"],
                align_dict=None, tgt_dict=self.tgt_dict, remove_bpe=self.post_process,
                extra_symbols_to_ignore=strip)
            score = hypo["score"] / math.log(2)  # base 2, as fairseq-generate prints it
            out.append("H-{}\t{}\t{}".format(sample_id, score, hypo_str))
            out.append("D-{}\t{}\t{}".format(sample_id, score, self.decode_fn(hypo_str)))
            positional = hypo["positional_scores"].div(math.log(2)).tolist()
            out.append("P-{}\t{}".format(sample_id, " ".join("{:.4f}".format(x) for x in positional)))
        return out


def collate(directions: Sequence[Direction], batch: Sequence[Tuple[int, int]]):
    """One mixed batch: each direction's part collated by its own dataset, padded to a common width, stacked."""
    parts: Dict[int, list] = {}
    for k, i in batch:
        parts.setdefault(k, []).append(directions[k].dataset[i])
    width = {"source": max(s["source"].numel() for p in parts.values() for s in p),
             "target": max((s["target"].numel() for p in parts.values() for s in p if s["target"] is not None),
                           default=0)}
    collated = [(k, directions[k].dataset.collater(samples, pad_to_length=dict(width))) for k, samples in parts.items()]
    rows = [k for k, c in collated for _ in range(c["id"].numel())]
    cat = lambda get: torch.cat([get(c) for _, c in collated], dim=0)  # noqa: E731
    has_target = all(c.get("target") is not None for _, c in collated)
    return {
        "rows": rows,
        "id": cat(lambda c: c["id"]),
        "net_input": {"src_tokens": cat(lambda c: c["net_input"]["src_tokens"]),
                      "src_lengths": cat(lambda c: c["net_input"]["src_lengths"])},
        "target": cat(lambda c: c["target"]) if has_target else None,
    }


def decode(directions: Sequence[Direction], batches: Sequence[Sequence[Tuple[int, int]]], model, generator,
           fmt: OutputFormat, device: torch.device, on_done: Callable[[Direction], None],
           progress: Optional[Progress] = None) -> Dict[str, float]:
    """Run beam search over the batches; call ``on_done`` for each direction as soon as it is complete."""
    lslo = hasattr(model, "language_ids") and hasattr(model, "lslo_spec")
    remaining = [len(d) for d in directions]
    timings = {"decode_s": 0.0, "sentences": 0}
    for batch in batches:
        sample = collate(directions, batch)
        rows = sample["rows"]
        net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
        if lslo:  # each sample's target language for the target-routed layers (its prefix token comes too late)
            net_input["lslo_tgt_lang"] = model.language_ids([directions[k].tgt for k in rows], device=device)
        prefix = torch.tensor([[directions[k].tgt_token] for k in rows], dtype=torch.long, device=device)
        start = time.perf_counter()
        hypos = generator.generate([model], {"net_input": net_input}, prefix_tokens=prefix)
        timings["decode_s"] += time.perf_counter() - start
        src_tokens = sample["net_input"]["src_tokens"]
        for j, (k, sample_id) in enumerate(zip(rows, sample["id"].tolist())):
            d = directions[k]
            target = sample["target"][j] if sample["target"] is not None else None
            d.lines[sample_id] = fmt.lines(sample_id, src_tokens[j], target, hypos[j], d.tgt_token)
            remaining[k] -= 1
        timings["sentences"] += len(rows)
        finished = sorted({k for k in rows if remaining[k] == 0})
        if progress is not None:
            progress.update(len(rows), directions[rows[-1]].pair)
        for k in finished:
            on_done(directions[k])
            directions[k].lines = {}
            if progress is not None:
                progress.message(f"{directions[k].pair}: {len(directions[k])} sentences done")
    return timings
