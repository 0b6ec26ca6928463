"""Every language-token option of translation_multi_simple_epoch, through fairseq's own data path.

The data is binarized with fairseq's builders, loaded by the task (MultilingualDatasetManager,
LanguagePairDataset, TransformEosLangPairDataset, SampledMultiDataset), and batched by the
task's own batch iterator: the tokens are wherever fairseq puts them, not where a test assumes.
Each word names its language (``fr3``), so every sample's true languages are read back from its
words and compared with the model's routing ids and the criterion's target ids.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset

from fairseq_lslo.criterions.target_languages import TargetLanguages
from fairseq_lslo.languages import LSLoConfigError

LANGS = ("en", "fr", "de")
ALL_PAIRS = ("en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr")
INVENTORY = ["--lslo-langs", "de:low,en:high,fr:high", "--lslo-rank", "high:2,low:3"]  # order != fairseq's
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


def write_data(root: str, pairs: Sequence[str] = ALL_PAIRS, separate: bool = False) -> str:
    """Binarized train/valid/test data per direction; shared per-language dictionaries, or a
    source and a target dictionary whose ids differ (``--source-dict``/``--target-dict``)."""
    os.makedirs(root, exist_ok=True)
    if separate:
        write_dict(os.path.join(root, "src_dict.txt"))
        write_dict(os.path.join(root, "tgt_dict.txt"), fillers=1)
    for lang in LANGS:
        write_dict(os.path.join(root, f"dict.{lang}.txt"))
    src_dict = Dictionary.load(os.path.join(root, "src_dict.txt" if separate else "dict.en.txt"))
    tgt_dict = Dictionary.load(os.path.join(root, "tgt_dict.txt" if separate else "dict.en.txt"))
    for split, count in (("train", 8), ("valid", 4), ("test", 3)):
        for pair in pairs:
            src, tgt = pair.split("-")
            for lang, d in ((src, src_dict), (tgt, tgt_dict)):
                prefix = os.path.join(root, f"{split}.{pair}.{lang}")
                builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
                for k in range(count):
                    n = 1 + (k * 3 + len(pair) + (lang == tgt)) % 5  # varied lengths: padding in every batch
                    ids = [d.index(w) for w in sentence(lang, n, k)] + [d.eos()]
                    builder.add_item(torch.tensor(ids, dtype=torch.int32))
                builder.finalize(prefix + ".idx")
    return root


def setup(data: str, flags: Sequence[str], pairs: Sequence[str] = ALL_PAIRS, routing=("src,tgt", "tgt*2"),
          separate: bool = False, extra: Sequence[str] = ()):
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs),
            "--arch", "lslo_transformer", "--cpu", "--seed", "1", *DIMS, *INVENTORY,
            "--lslo-encoder-routing", routing[0], "--lslo-decoder-routing", routing[1],
            "--criterion", "lslo_label_smoothed_cross_entropy", *flags, *extra]
    if separate:
        argv += ["--source-dict", os.path.join(data, "src_dict.txt"), "--target-dict", os.path.join(data, "tgt_dict.txt")]
    else:
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


LANGTOK = ["--encoder-langtok", "src", "--decoder-langtok"]


@pytest.mark.parametrize("flags", [
    LANGTOK,
    LANGTOK + ["--lang-tok-style", "mbart"],
    LANGTOK + ["--lang-tok-replacing-bos-eos"],
    LANGTOK + ["--lang-tok-replacing-bos-eos", "--left-pad-source", "False"],
    LANGTOK + ["--left-pad-source", "False", "--left-pad-target", "True"],
    LANGTOK + ["--lang-tok-replacing-bos-eos", "--lang-tok-style", "mbart"],
], ids=["multilingual", "mbart", "replacing-bos-eos", "replacing-right-padded-source", "right-pad-src-left-pad-tgt",
        "replacing-mbart"])
def test_routing_and_criterion_read_the_true_languages(tmp_path, flags):
    data = write_data(str(tmp_path))
    _, task, model = setup(data, flags)
    check_all_batches(task, model)


@pytest.mark.parametrize("replacing", [False, True], ids=["prepended", "replacing-bos-eos"])
def test_separate_source_and_target_dictionaries(tmp_path, replacing):
    """--source-dict/--target-dict: the target dictionary has one more symbol, so every language
    token's id differs by one between the two (reading the target side in the source dictionary
    would give another language, silently)."""
    data = write_data(str(tmp_path), separate=True)
    _, task, model = setup(data, LANGTOK + (["--lang-tok-replacing-bos-eos"] if replacing else []), separate=True)
    src_d, tgt_d = task.source_dictionary, task.target_dictionary
    assert src_d is not tgt_d and tgt_d.index("__en__") == src_d.index("__en__") + 1
    assert src_d[tgt_d.index("__en__")] == "__fr__"  # the trap is armed
    check_all_batches(task, model)


@pytest.mark.parametrize("decoder_langtok", [False, True], ids=["encoder-only", "with-decoder-langtok"])
def test_encoder_langtok_tgt_reads_the_target_language_from_the_source_side(tmp_path, decoder_langtok):
    """--encoder-langtok tgt: the source carries the *target* language token."""
    data = write_data(str(tmp_path))
    flags = ["--encoder-langtok", "tgt"] + (["--decoder-langtok"] if decoder_langtok else [])
    _, task, model = setup(data, flags, routing=("tgt*2", "tgt*2"))
    sample = batches(task, "train")[0]
    first = sample["net_input"]["src_tokens"][0]
    first = first[first.ne(task.source_dictionary.pad())]
    assert task.source_dictionary[int(first[0])] == f"__{true_languages(task, sample)[1][0]}__"
    check_all_batches(task, model, needs_src=False)


def test_encoder_langtok_tgt_with_source_routed_layers_names_the_flag(tmp_path):
    data = write_data(str(tmp_path))
    with pytest.raises(LSLoConfigError, match=r"--encoder-langtok tgt puts the \*target\* language token.*add "
                                              r"--encoder-langtok src"):
        setup(data, ["--encoder-langtok", "tgt", "--decoder-langtok"], routing=("src,tgt", "tgt*2"))


def test_one_source_language_needs_no_source_token(tmp_path):
    """One-to-many --lang-pairs: every sample's source is the one source language."""
    pairs = ("en-fr", "en-de")
    data = write_data(str(tmp_path), pairs=pairs)
    _, task, model = setup(data, ["--decoder-langtok"], pairs=pairs)
    check_all_batches(task, model)


def test_no_decoder_langtok_with_target_routed_layers_names_the_flag(tmp_path):
    data = write_data(str(tmp_path))
    with pytest.raises(LSLoConfigError, match="add --decoder-langtok"):
        setup(data, ["--encoder-langtok", "src"])


def test_criterion_alone_names_the_flag_for_a_plain_transformer(tmp_path):
    data = write_data(str(tmp_path))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(ALL_PAIRS), "--arch",
        "transformer", "--cpu", *DIMS, "--share-all-embeddings", "--encoder-langtok", "src"])
    task = tasks.setup_task(args)
    model = task.build_model(args)
    with pytest.raises(LSLoConfigError, match="add --decoder-langtok"):
        TargetLanguages.from_task_and_model(task, model)
