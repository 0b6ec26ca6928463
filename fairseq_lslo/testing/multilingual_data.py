"""Tiny multilingual data written with fairseq's own builders, loaded and batched by the task itself.

Each word names its language (``fr3``), so every sample's true languages can be read back from
its words, wherever fairseq put (or did not put) the language tokens.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset

from fairseq_lslo.criterions.target_languages import TargetLanguages

LANGS = ("en", "fr", "de")
ALL_PAIRS = ("en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr")
INVENTORY = ["--lslo-langs", "fr:high,de:low,en:high", "--lslo-rank", "high:2,low:3"]  # not fairseq's (sorted) order
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--dropout", "0.0"]
N_WORDS = 5


def words(lang: str) -> List[str]:
    return [f"{lang}{i}" for i in range(N_WORDS)]


def write_dict(path: str, fillers: int = 0) -> None:
    """All languages' words; ``fillers`` extra symbols shift every later id (language tokens included)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(fillers):
            f.write(f"filler{i} 1\n")
        for lang in LANGS:
            for w in words(lang):
                f.write(f"{w} 1\n")


def sentence(lang: str, n: int, k: int) -> List[str]:
    return [words(lang)[(k + j) % N_WORDS] for j in range(n)]


def write_data(root: str, pairs: Sequence[str] = ALL_PAIRS, separate: bool = False, impl: str = "mmap",
               counts: Optional[Dict[str, int]] = None, fillers: Optional[Dict[str, int]] = None) -> str:
    """train/valid/test data per direction, in any ``--dataset-impl`` fairseq writes (``raw``: text).

    Each side is binarized with the dictionary fairseq reads it with: ``dict.{lang}.txt`` (whose ids
    ``fillers`` can shift per language), or with ``separate`` a source and a target dictionary
    whose ids differ (``--source-dict``/``--target-dict``).
    """
    os.makedirs(root, exist_ok=True)
    if separate:
        write_dict(os.path.join(root, "src_dict.txt"))
        write_dict(os.path.join(root, "tgt_dict.txt"), fillers=1)
    for lang in LANGS:
        write_dict(os.path.join(root, f"dict.{lang}.txt"), fillers=(fillers or {}).get(lang, 0))
    dicts = {name: Dictionary.load(os.path.join(root, name))
             for name in ["src_dict.txt", "tgt_dict.txt"] * separate + [f"dict.{lang}.txt" for lang in LANGS]}
    for split, count in (counts or {"train": 8, "valid": 4, "test": 3}).items():
        for pair in pairs:
            src, tgt = pair.split("-")
            for lang, dict_file in ((src, "src_dict.txt"), (tgt, "tgt_dict.txt")):
                d = dicts[dict_file if separate else f"dict.{lang}.txt"]
                lines = [sentence(lang, 1 + (k * 3 + len(pair) + (lang == tgt)) % 5, k) for k in range(count)]
                write_dataset(os.path.join(root, f"{split}.{pair}.{lang}"), lines, d, impl)
    return root


def write_dataset(prefix: str, lines: List[List[str]], d: Dictionary, impl: str) -> None:
    """One side of one split, as fairseq-preprocess would write it for ``--dataset-impl impl``."""
    if impl == "raw":
        with open(prefix, "w", encoding="utf-8") as f:
            f.write("".join(" ".join(line) + "\n" for line in lines))
        return
    if impl == "huffman":
        from fairseq.data.huffman import HuffmanCodeBuilder, HuffmanMMapIndexedDatasetBuilder

        code = HuffmanCodeBuilder()
        for line in lines:
            code.add_symbols(*line)
        with HuffmanMMapIndexedDatasetBuilder(prefix, code.build_code()) as builder:
            for line in lines:
                builder.add_item(line)
        return
    builder = indexed_dataset.make_builder(prefix + ".bin", impl=impl, vocab_size=len(d))
    for line in lines:
        builder.add_item(torch.tensor([d.index(w) for w in line] + [d.eos()], dtype=torch.int32))
    builder.finalize(prefix + ".idx")


def setup(data: str, flags: Sequence[str], pairs: Sequence[str] = ALL_PAIRS, routing=("src,tgt", "tgt*2"),
          separate: bool = False, extra: Sequence[str] = (), share: bool = True):
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs),
            "--arch", "lslo_transformer", "--cpu", "--seed", "1", *DIMS, *INVENTORY,
            "--lslo-encoder-routing", routing[0], "--lslo-decoder-routing", routing[1],
            "--criterion", "lslo_label_smoothed_cross_entropy", *flags, *extra]
    if separate:
        argv += ["--source-dict", os.path.join(data, "src_dict.txt"), "--target-dict", os.path.join(data, "tgt_dict.txt")]
    elif share:
        argv += ["--share-all-embeddings"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args)
    model.eval()
    return args, task, model


def batches(task, split: str, max_sentences: int = 16):
    if split not in task.datasets:  # (fairseq's load_dataset fails when asked twice)
        task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=400, max_sentences=max_sentences,
                                  max_positions=(64, 64), seed=1, num_workers=0)
    return list(itr.next_epoch_itr(shuffle=False))


def word_language(dictionary, row: torch.Tensor) -> str:
    """The language of the first word of a row (skipping specials and language tokens)."""
    for idx in row.tolist():
        symbol = dictionary[idx]
        if symbol[:2] in LANGS and symbol[2:].isdigit():
            return symbol[:2]
    raise AssertionError(f"no word in {dictionary.string(row)}")


def true_languages(task, sample) -> Tuple[List[str], List[str]]:
    src = [word_language(task.source_dictionary, r) for r in sample["net_input"]["src_tokens"]]
    tgt = [word_language(task.target_dictionary, r) for r in sample["target"]]
    return src, tgt


def routed_languages(model, sample) -> Dict[str, List[str]]:
    """Run the model on the batch; return the languages its LSLo modules were routed by."""
    with torch.no_grad():
        model(**sample["net_input"])
    langs, codes = model.encoder.lslo_router.languages, model.lslo_spec.codes
    out = {}
    for side, ids, uniform in (("src", langs.src, langs.src_uniform), ("tgt", langs.tgt, langs.tgt_uniform)):
        if ids is not None:
            out[side] = [codes[i] for i in ids.tolist()]
        elif uniform is not None:
            out[side] = [codes[uniform]] * sample["nsentences"]
    return out


def check_all_batches(task, model, splits=("train", "valid"), needs_src: bool = True) -> int:
    """Routing ids and the criterion's target ids equal the true languages in every batch."""
    criterion_ids = TargetLanguages.from_task_and_model(task, model)
    codes = model.lslo_spec.codes
    mixed = padded_src = padded_tgt = 0
    for split in splits:
        for sample in batches(task, split):
            net_input = sample["net_input"]
            padded_src += int(net_input["src_tokens"].eq(task.source_dictionary.pad()).any())
            padded_tgt += int(net_input["prev_output_tokens"].eq(task.target_dictionary.pad()).any())
            src, tgt = true_languages(task, sample)
            routed = routed_languages(model, sample)
            if needs_src:
                assert routed["src"] == src, split
            assert routed["tgt"] == tgt, split
            assert [codes[i] for i in criterion_ids.ids(sample).tolist()] == tgt, split
            mixed += len(set(zip(src, tgt))) > 1
    assert mixed and padded_src and padded_tgt, "no mixed or padded batch: the check proved less than it should"
    return mixed


