"""fairseq_lslo.Translator on the shared tiny run: equal to fairseq-generate, mixed directions, every kind of file."""
from __future__ import annotations

import os
import random
import shutil

import pytest
import torch

import fairseq_lslo
from fairseq_lslo.errors import LSLoConfigError, LSLoFileError
from fairseq_lslo.testing.generate import fairseq_generate, generate_args


def test_translator_is_importable_from_the_top_package():
    from fairseq_lslo.inference import Translator

    assert fairseq_lslo.Translator is Translator


@pytest.fixture(scope="module")
def translator(tiny_run):
    return fairseq_lslo.Translator.from_checkpoint(tiny_run.ckpt)


@pytest.fixture(scope="module")
def generated(tiny_run):
    """fairseq-generate (beam 5) on every direction of the test split: {direction: {id: Generated}}."""
    out = {}
    for pair in tiny_run.pairs:
        src, tgt = pair.split("-")
        argv = generate_args(tiny_run.data, tiny_run.ckpt, src, tgt, tiny_run.pairs, tiny_run.env()["USER_DIR"],
                             extra=["--required-batch-size-multiple", "1"])
        out[pair] = fairseq_generate(argv)
    return out


def raw(tiny_run, lang):
    with open(os.path.join(tiny_run.raw, f"test.{lang}"), encoding="utf-8") as f:
        return f.read().splitlines()


def assert_same(hypothesis, reference, where):
    assert hypothesis.pieces == reference.pieces, where
    assert hypothesis.score == pytest.approx(reference.score, abs=1e-4), where


def test_every_direction_equals_fairseq_generate(tiny_run, translator, generated):
    for pair, reference in generated.items():
        src, tgt = pair.split("-")
        texts = raw(tiny_run, src)
        assert sorted(reference) == list(range(len(texts)))
        hypos = translator.translate(texts, src, tgt, beam=5, return_scores=True)
        for i, (nbest, ref) in enumerate(zip(hypos, (reference[i] for i in range(len(texts))))):
            assert len(nbest) == 1
            assert_same(nbest[0], ref, f"{pair} sentence {i}")
            assert "__" not in nbest[0].text and nbest[0].text == nbest[0].pieces.replace(" ", "").replace("\u2581", " ").strip()


def test_one_mixed_call_equals_fairseq_generate(tiny_run, translator, generated):
    items = [(pair, i) for pair in tiny_run.pairs for i in range(len(raw(tiny_run, "en")))]
    random.Random(0).shuffle(items)
    texts = [raw(tiny_run, pair.split("-")[0])[i] for pair, i in items]
    srcs = [pair.split("-")[0] for pair, _ in items]
    tgts = [pair.split("-")[1] for pair, _ in items]
    calls = []
    original = translator._collate

    def spy(batch, *args):
        calls.append({f"{srcs[i]}-{tgts[i]}" for i in batch})
        return original(batch, *args)

    translator._collate = spy
    try:
        hypos = translator.translate(texts, srcs, tgts, beam=5, return_scores=True, max_tokens=100000)
    finally:
        del translator._collate
    assert len(calls) == 1 and len(calls[0]) == 6  # one batch holds all six directions
    for (pair, i), nbest in zip(items, hypos):
        assert_same(nbest[0], generated[pair][i], f"{pair} sentence {i} (mixed call)")
    plain = translator.translate(texts, srcs, tgts)
    assert plain == [h[0].text for h in hypos]


def test_nbest_and_scores(tiny_run, translator):
    texts = raw(tiny_run, "en")[:3]
    hypos = translator.translate(texts, "en", "fr", beam=4, nbest=3)
    assert [len(h) for h in hypos] == [3, 3, 3]
    for nbest in hypos:
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True) and len({h.pieces for h in nbest}) == 3
    assert [h[0].text for h in hypos] == translator.translate(texts, "en", "fr", beam=4)


def test_languages_directions_and_unknown_language(translator):
    assert translator.languages == ["de", "en", "fr"]
    assert sorted(translator.directions) == sorted(["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"])
    with pytest.raises(LSLoConfigError, match=r"unknown target language 'xx'.*de, en, fr"):
        translator.translate(["en1 en2"], "en", "xx")
    with pytest.raises(LSLoConfigError, match=r"unknown source language 'it' \(text 1\).*de, en, fr"):
        translator.translate(["en1", "it1"], ["en", "it"], "de")
    with pytest.raises(LSLoConfigError, match="one per text"):
        translator.translate(["en1", "en2"], ["en"], "de")
    with pytest.raises(LSLoConfigError, match="one string"):
        translator.translate("en1 en2", "en", "de")


def test_count_tokens(translator):
    pieces = translator.sp.encode("en1 en2", out_type=str)
    assert translator.count_tokens("en1 en2", "en") == len(pieces) + 2  # __en__ ... </s>


def test_plain_base_checkpoint_equals_fairseq_generate(tiny_run):
    base = fairseq_lslo.Translator.from_checkpoint(tiny_run.base)
    assert not base.is_lslo and base.languages == ["de", "en", "fr"]
    argv = generate_args(tiny_run.data, tiny_run.base, "de", "en", tiny_run.pairs, tiny_run.env()["USER_DIR"],
                         extra=["--required-batch-size-multiple", "1"])
    reference = fairseq_generate(argv)
    hypos = base.translate(raw(tiny_run, "de"), "de", "en", return_scores=True)
    for i, nbest in enumerate(hypos):
        assert_same(nbest[0], reference[i], f"base de-en sentence {i}")


def test_base_plus_exported_adapters_translates_as_the_lslo_checkpoint(tiny_run, translator, tmp_path):
    from fairseq_lslo.cli import export

    adapters = str(tmp_path / "adapters.safetensors")
    assert export.main([tiny_run.ckpt, "-o", adapters]) == 0
    combined = fairseq_lslo.Translator.from_checkpoint(tiny_run.base, adapters=adapters)
    assert combined.is_lslo
    texts = raw(tiny_run, "fr")
    assert combined.translate(texts, "fr", "de") == translator.translate(texts, "fr", "de")
    with pytest.raises(LSLoFileError, match="adapters="):
        fairseq_lslo.Translator.from_checkpoint(tiny_run.base, adapters=str(tmp_path / "missing.safetensors"))


def test_merged_checkpoint_serves_only_its_direction(tiny_run, translator, tmp_path):
    from fairseq_lslo.cli import merge

    merged = str(tmp_path / "en-de.pt")
    assert merge.main([tiny_run.ckpt, "-s", "en", "-t", "de", "-o", merged]) == 0
    one = fairseq_lslo.Translator.from_checkpoint(merged, data=tiny_run.data, spm=tiny_run.spm)
    assert one.directions == ["en-de"] and one.languages == ["de", "en"]
    texts = raw(tiny_run, "en")
    assert one.translate(texts, "en", "de") == translator.translate(texts, "en", "de")
    with pytest.raises(LSLoConfigError, match=r"merged for en-de .*asked for en-fr"):
        one.translate(texts[:1], "en", "fr")


def test_files_found_beside_the_checkpoint_or_named(tiny_run, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(tiny_run.ckpt, lone / "model.pt")
    with pytest.raises(LSLoFileError, match=r"spm="):
        fairseq_lslo.Translator.from_checkpoint(str(lone / "model.pt"))
    with pytest.raises(LSLoFileError, match=r"spm=.*nope.model"):
        fairseq_lslo.Translator.from_checkpoint(str(lone / "model.pt"), spm=str(tmp_path / "nope.model"))
    with pytest.raises(LSLoFileError, match=r"data="):
        fairseq_lslo.Translator.from_checkpoint(str(lone / "model.pt"), data=str(tmp_path / "nodata"))
    with pytest.raises(LSLoFileError, match="no such checkpoint"):
        fairseq_lslo.Translator.from_checkpoint(str(tmp_path / "none.pt"))
    # the checkpoint's own training data directory supplies the dictionaries; spm given
    t = fairseq_lslo.Translator.from_checkpoint(str(lone / "model.pt"), spm=tiny_run.spm)
    assert t.translate(["en1 en2"], "en", "fr")


def test_half_precision_is_honoured(tiny_run, translator):
    with pytest.raises(LSLoConfigError, match="half"):
        fairseq_lslo.Translator.from_checkpoint(tiny_run.ckpt, half="yes")
    half = fairseq_lslo.Translator.from_checkpoint(tiny_run.ckpt, device="cpu", half=True)
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}
    texts = raw(tiny_run, "en")
    out = half.translate(texts, "en", "fr")  # torch runs float16 on the CPU: the model decodes in it
    assert len(out) == len(texts) and all(isinstance(s, str) for s in out)
    assert sum(a == b for a, b in zip(out, translator.translate(texts, "en", "fr"))) >= len(texts) // 2


def test_published_flores_layout_loads_from_the_model_directory_alone(tmp_path):
    """model.pt + dict.txt + sentencepiece.bpe.model + language_pairs.txt, as the FLORES-101 archives hold them."""
    import tarfile

    import flores_fixture

    with tarfile.open(flores_fixture.archives()["model"]) as tar:
        tar.extractall(tmp_path)
    t = fairseq_lslo.Translator.from_checkpoint(str(tmp_path / "flores101_mm100_615M" / "model.pt"))
    codes = sorted({c for c, _ in flores_fixture.LANG12} | set(flores_fixture.EXTRA_MODEL_LANGS))
    assert t.languages == codes and len(t.directions) == len(codes) * (len(codes) - 1)
    out = t.translate(["Hello.", "Bonjour."], ["en", "fr"], ["wo", "de"], max_len_b=5)
    assert len(out) == 2 and not any("__" in s for s in out)
