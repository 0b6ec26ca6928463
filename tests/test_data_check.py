"""data_check under every --dataset-impl fairseq offers, on data written by fairseq's own builders."""
from __future__ import annotations

import os

import pytest
from fairseq.data import Dictionary

from fairseq_lslo.data_check import BinarizedDataError, check_binarized
from fairseq_lslo.testing.multilingual_data import (ALL_PAIRS, batches, check_all_batches, setup, write_data,
                                                    write_dataset)

LANGTOK = ["--encoder-langtok", "src", "--decoder-langtok"]
SPLITS = {"train": 8, "valid": 4}
PAIRS = ["en-fr", "fr-de"]


def data_for(tmp_path, impl: str) -> str:
    return write_data(str(tmp_path / impl), pairs=PAIRS, impl=impl, counts=SPLITS)


@pytest.mark.parametrize("impl, flag", [("mmap", None), ("mmap", "mmap"), ("lazy", "lazy")])
def test_readable_impls_are_checked_and_the_task_reads_them(tmp_path, impl, flag):
    """The check accepts them, and fairseq's task really loads, batches and routes them."""
    data = data_for(tmp_path, impl)
    assert check_binarized([data], list(SPLITS), PAIRS, flag) == 2 * 2 * len(PAIRS)
    extra = ["--dataset-impl", flag] if flag else []
    _, task, model = setup(data, LANGTOK, pairs=PAIRS, extra=extra)  # build_model runs the check too
    check_all_batches(task, model)


@pytest.mark.parametrize("impl, flag, key", [
    ("lazy", "cached", r"\d"),  # a cached dataset is never prefetched by this task: KeyError (a sample index)
    ("lazy", None, r"\d"),  # a lazy/cached index without --dataset-impl is read as cached: the same
    ("raw", "raw", "main:en-fr"),  # shards are counted by .idx files
])
def test_refused_impls_fail_in_fairseq_itself(tmp_path, impl, flag, key):
    """Why the check refuses them: without it (a plain transformer), fairseq's own task fails.
    If a fairseq release fixes this, this test fails and the refusal should go."""
    from fairseq import options, tasks

    data = data_for(tmp_path, impl)
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS), "--arch", "transformer",
            "--cpu", *LANGTOK] + (["--dataset-impl", flag] if flag else [])
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    task.build_model(args)  # a plain transformer: no LSLo check
    with pytest.raises(KeyError, match=key):
        batches(task, "train")
    with pytest.raises(BinarizedDataError, match="cannot be used here|pass --dataset-impl lazy"):
        check_binarized([data], list(SPLITS), PAIRS, flag)


@pytest.mark.parametrize("impl, advice", [
    ("cached", r"--dataset-impl cached cannot be used here: .*never prefetches.* work with --dataset-impl lazy"),
    ("raw", r"--dataset-impl raw cannot be used here: .*counts data shards by their .idx files"),
    ("huffman", r"--dataset-impl huffman cannot be used here: .*Huffman coder's own symbol ids"),
    ("fasta", r"--dataset-impl fasta cannot be used here: it reads protein FASTA files"),
])
def test_refused_impls_say_why(tmp_path, impl, advice):
    data = data_for(tmp_path, "mmap")
    with pytest.raises(BinarizedDataError, match=advice):
        check_binarized([data], list(SPLITS), PAIRS, impl)
    with pytest.raises(BinarizedDataError, match=advice):  # fairseq-train's path (build_model) says so too
        setup(data, LANGTOK, pairs=PAIRS, extra=["--dataset-impl", impl])


@pytest.mark.parametrize("impl", ["mmap", "lazy"])
def test_truncated_data_file(tmp_path, impl):
    data = data_for(tmp_path, impl)
    victim = os.path.join(data, "train.fr-de.de.bin")
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(BinarizedDataError, match=rf"train.fr-de.de.bin: {size - 1} bytes, but its index describes "
                                                 rf"{size}: the file is truncated"):
        check_binarized([data], list(SPLITS), PAIRS, impl)


@pytest.mark.parametrize("impl", ["mmap", "lazy"])
def test_sides_with_different_sentence_counts(tmp_path, impl):
    data = data_for(tmp_path, impl)
    d = Dictionary.load(os.path.join(data, "dict.en.txt"))
    write_dataset(os.path.join(data, "valid.en-fr.fr"), [["fr1", "fr2"]] * 3, d, impl)  # 3 sentences, not 4
    with pytest.raises(BinarizedDataError, match=r"valid.en-fr.en has 4 sentences but .*valid.en-fr.fr has 3"):
        check_binarized([data], list(SPLITS), PAIRS, impl)


@pytest.mark.parametrize("written, flag, advice", [
    ("mmap", "lazy", r"is a mmap \(MMIDIDX\) index, but --dataset-impl lazy reads lazy/cached \(TNTIDX\) "
                     r"indexes: pass --dataset-impl mmap"),
    ("lazy", "mmap", r"is a lazy/cached \(TNTIDX\) index, but --dataset-impl mmap reads mmap \(MMIDIDX\) "
                     r"indexes: pass --dataset-impl lazy"),
    ("lazy", None, r"is a lazy/cached \(TNTIDX\) index; without --dataset-impl fairseq reads it as cached, .*pass "
                   r"--dataset-impl lazy"),
    ("huffman", None, r"is a huffman \(HUFFIDX\) index; without --dataset-impl fairseq reads it as huffman, and a "
                      r"huffman dataset decodes"),
    ("raw", None, r"expected train.en-fr.en.idx and .bin \(train.en-fr.en is raw text: --dataset-impl raw"),
])
def test_data_in_another_format_than_dataset_impl(tmp_path, written, flag, advice):
    data = data_for(tmp_path, written)
    with pytest.raises(BinarizedDataError, match=advice):
        check_binarized([data], list(SPLITS), PAIRS, flag)


def test_unreadable_index(tmp_path):
    data = data_for(tmp_path, "mmap")
    with open(os.path.join(data, "valid.fr-de.fr.idx"), "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(BinarizedDataError, match=r"valid.fr-de.fr.idx: not a fairseq index \(unknown header\)"):
        check_binarized([data], list(SPLITS), PAIRS)


def test_model_build_runs_the_check_with_the_task_s_dataset_impl(tmp_path):
    """fairseq-train's path: build_model checks the data under the task's own --dataset-impl."""
    data = data_for(tmp_path, "lazy")
    victim = os.path.join(data, "valid.en-fr.fr.bin")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 4)
    with pytest.raises(BinarizedDataError, match="valid.en-fr.fr.bin: .* the file is truncated"):
        setup(data, LANGTOK, pairs=PAIRS, extra=["--dataset-impl", "lazy"])
    with pytest.raises(BinarizedDataError, match="pass --dataset-impl lazy"):
        setup(data, LANGTOK, pairs=PAIRS, extra=["--dataset-impl", "mmap"])


def test_shards_are_checked_too(tmp_path):
    """fairseq combines train, train1, train2, ...: a damaged later shard is found as well."""
    data = data_for(tmp_path, "mmap")
    d = Dictionary.load(os.path.join(data, "dict.en.txt"))
    write_dataset(os.path.join(data, "train1.en-fr.en"), [["en1"]] * 2, d, "mmap")
    write_dataset(os.path.join(data, "train1.en-fr.fr"), [["fr1"]] * 3, d, "mmap")
    with pytest.raises(BinarizedDataError, match="train1.en-fr.en has 2 sentences"):
        check_binarized([data], ["train"], PAIRS)


def test_missing_direction_names_the_files(tmp_path):
    data = data_for(tmp_path, "mmap")
    with pytest.raises(BinarizedDataError, match=r"no binarized train data for en-de \(en side\): expected "
                                                 r"train.en-de.en.idx and .bin"):
        check_binarized([data], ["train"], ALL_PAIRS)
    os.unlink(os.path.join(data, "valid.fr-de.de.bin"))
    with pytest.raises(BinarizedDataError, match=r"no binarized valid data for fr-de \(de side\): expected "
                                                 r"valid.fr-de.de.idx and .bin \(valid.fr-de.de.idx exists\)"):
        check_binarized([data], ["valid"], PAIRS)
