"""lslo_data_prep.epoch_size against fairseq's own batching of the same data (translation_multi_simple_epoch)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from lslo_data_prep.epoch_size import count_batches, main, updates_per_epoch

LANGS = (("en", "eng", "high"), ("fr", "fra", "high"), ("de", "deu", "medium"), ("wo", "wol", "low"))
N_SENTENCES = 300
WORDS = [f"w{i}" for i in range(50)]


def write_data(root, n_of_pair=lambda pair: N_SENTENCES) -> list:
    """Multi-way parallel binarized data with very uneven lengths (1 to 60 tokens), laid out as prepare.py
    does; direction ``pair`` holds its first ``n_of_pair(pair)`` sentences.  Returns the directions."""
    from fairseq.data import Dictionary, indexed_dataset

    d = Dictionary()
    for w in WORDS:
        d.add_symbol(w)
    rng = np.random.RandomState(7)
    lengths = {code: rng.randint(1, 61, size=N_SENTENCES) for code, _, _ in LANGS}
    for code, _, _ in LANGS:
        d.save(str(root / f"dict.{code}.txt"))
    pairs = [f"{s}-{t}" for s, _, _ in LANGS for t, _, _ in LANGS if s != t]
    written = {}  # one binary per language and length, hard-linked per direction (as prepare.py does)
    for pair in pairs:
        for lang in pair.split("-"):
            n_sent = n_of_pair(pair)
            if (lang, n_sent) not in written:
                prefix = str(root / f"{lang}-{n_sent}")
                builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
                for n in lengths[lang][:n_sent]:
                    builder.add_item(torch.arange(4, 4 + n + 1, dtype=torch.int32) % len(d))
                builder.finalize(prefix + ".idx")
                written[lang, n_sent] = prefix
            for ext in ("bin", "idx"):
                os.link(f"{written[lang, n_sent]}.{ext}", root / f"train.{pair}.{lang}.{ext}")
    (root / "langs.tsv").write_text("".join(f"{c}\t{f}\t{g}\n" for c, f, g in LANGS))
    (root / "lang_pairs.txt").write_text(",".join(pairs) + "\n")
    return pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("epoch-size")
    return str(root), write_data(root)


_TASKS = {}


def fairseq_batches(data, pairs, max_tokens, world_size=1, extra=()):
    """Batches per worker of fairseq's first epoch, as fairseq-train builds them (recipes/train.sh's task flags)."""
    from fairseq import options, tasks

    key = (data, tuple(extra))
    if key not in _TASKS:  # loading the data is the slow part: once per data and flags
        argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs),
                "--encoder-langtok", "src", "--decoder-langtok", "--arch", "transformer", "--cpu", *extra]
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        args.max_source_positions = args.max_target_positions = 1024  # (set by the model's arch in fairseq-train)
        task = tasks.setup_task(args)
        task.load_dataset("train", epoch=1)
        _TASKS[key] = task
    task = _TASKS[key]
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=max_tokens, max_positions=(1024, 1024),
                                  required_batch_size_multiple=8, seed=1, num_shards=world_size, shard_id=0,
                                  num_workers=0, epoch=1)
    return len(itr)


def test_full_epoch_equals_fairseq(data):
    root, pairs = data
    for max_tokens, world_size, update_freq in ((600, 1, 1), (1000, 2, 3), (250, 1, 4)):
        per_worker = fairseq_batches(root, pairs, max_tokens, world_size)
        expected = math.ceil(per_worker / update_freq)
        assert updates_per_epoch(root, max_tokens, update_freq, world_size) == expected  # concat: exact
        # temperature sampling (the recipes'): fairseq's counts per direction round down, and it draws the
        # missing sentences at random (so does the estimate, with its own seed): within 1%
        sampled = updates_per_epoch(root, max_tokens, update_freq, world_size, sampling_method="temperature",
                                    temperature=5)
        assert abs(sampled - expected) <= max(1, 0.01 * expected), (max_tokens, sampled, expected)


def test_virtual_epoch_follows_fairseq(data):
    root, pairs = data
    full = fairseq_batches(root, pairs, 600)
    virtual = fairseq_batches(root, pairs, 600, extra=["--sampling-method", "temperature", "--sampling-temperature",
                                                       "5", "--virtual-epoch-size", "500"])
    estimate = updates_per_epoch(root, 600, sampling_method="temperature", temperature=5, virtual_epoch_size=500)
    assert virtual < full / 4  # the virtual epoch is a sixth of the data
    assert abs(estimate - virtual) <= max(2, 0.1 * virtual), (estimate, virtual, full)


def test_uneven_directions_are_resized_like_fairseq(tmp_path):
    """Directions with fewer sentences are upsampled by temperature sampling: the epoch grows."""
    pairs = write_data(tmp_path, lambda pair: 60 if "wo" in pair else N_SENTENCES)
    flags = ["--sampling-method", "temperature", "--sampling-temperature", "5"]
    real = fairseq_batches(str(tmp_path), pairs, 600, extra=flags)
    concat = fairseq_batches(str(tmp_path), pairs, 600)
    assert real > concat * 1.1  # wo's six small directions drawn ~3.5 times as often
    assert abs(updates_per_epoch(str(tmp_path), 600, sampling_method="temperature", temperature=5) - real) <= 0.02 * real
    assert updates_per_epoch(str(tmp_path), 600) == concat


def test_batch_packing_counts_both_sides():
    # 24 sentences of 10 tokens, 100 tokens per batch: 10 fit, multiples of 8 -> 8 + 8 + 8
    assert count_batches(np.full(24, 10), max_tokens=100) == 3
    # the target counts too: a short source with a long target is a long sentence
    assert count_batches(np.full(24, 5), np.full(24, 50), max_tokens=100) > 3 * count_batches(np.full(24, 5), max_tokens=100)


def test_bad_input_names_the_file(tmp_path, capsys):
    (tmp_path / "langs.tsv").write_text("en\teng\thigh\nfr\tfra\thigh\n")
    assert main([str(tmp_path), "--max-tokens", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lslo_data_prep.epoch_size: error: ") and "train.en-fr.en.idx" in err
    assert main([str(tmp_path), "--max-tokens", "100", "--virtual-epoch-size", "0"]) == 2
    assert "--virtual-epoch-size" in capsys.readouterr().err
