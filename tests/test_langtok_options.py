"""Every language-token option of translation_multi_simple_epoch, through fairseq's own data path.

The data is binarized with fairseq's builders, loaded by the task (MultilingualDatasetManager,
LanguagePairDataset, TransformEosLangPairDataset, SampledMultiDataset), and batched by the
task's own batch iterator: the tokens are wherever fairseq puts them, not where a test assumes.
Each word names its language (``fr3``), so every sample's true languages are read back from its
words and compared with the model's routing ids and the criterion's target ids.
"""
from __future__ import annotations

import pytest
import torch
from fairseq import options, tasks

from fairseq_lslo.criterions.target_languages import TargetLanguages
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.testing.multilingual_data import (ALL_PAIRS, DIMS, batches, check_all_batches, setup, true_languages,
                                                    write_data)

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


def test_per_language_dictionaries_of_a_one_to_many_task(tmp_path):
    """Without --source-dict/--target-dict fairseq loads dict.{lang}.txt per language and only asks
    all source languages to share one and all target languages another: en-fr,en-de may have an
    English dictionary that differs from the French/German one."""
    pairs = ("en-fr", "en-de")
    data = write_data(str(tmp_path), pairs=pairs, fillers={"fr": 1, "de": 1})
    _, task, model = setup(data, LANGTOK, pairs=pairs, share=False)
    src_d, tgt_d = task.source_dictionary, task.target_dictionary
    assert tgt_d.index("__fr__") == src_d.index("__fr__") + 1
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


# --- generation ------------------------------------------------------------------------------
def randomize_adapters(model, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def record_decoder_step0(model):
    """Wrap the decoder (SequenceGenerator calls its ``forward`` directly, past any hook): its input
    and the target languages its LSLo modules were routed by, at its first call."""
    seen, forward = [], model.decoder.forward

    def recording(prev_output_tokens, *args, **kwargs):
        out = forward(prev_output_tokens, *args, **kwargs)
        if not seen:
            langs = model.encoder.lslo_router.languages
            tgt = langs.tgt.tolist() if langs.tgt is not None else [langs.tgt_uniform] * prev_output_tokens.size(0)
            seen.append((prev_output_tokens.clone(), [model.lslo_spec.codes[i] for i in tgt]))
        return out

    model.decoder.forward = recording
    return seen


def generation_args(data, flags, pairs=ALL_PAIRS, direction=None):
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs), "--path", "unused",
            "--beam", "2", "--max-len-b", "5", "--cpu", *flags]
    if direction:
        argv += ["-s", direction[0], "-t", direction[1]]
    return options.parse_args_and_arch(options.get_generation_parser(), argv)


def scores_match_training_forward(model, task, sample, hypos, bos: int) -> None:
    """Each hypothesis' per-token log-probs equal the training forward's (position 0 included)."""
    src = sample["net_input"]["src_tokens"]
    for row, hyps in enumerate(hypos):
        tokens = hyps[0]["tokens"]
        prev = torch.cat([torch.tensor([bos]), tokens[:-1]]).unsqueeze(0)
        one = src[row: row + 1]
        one = one[:, one[0].ne(task.source_dictionary.pad())]
        with torch.no_grad():
            lprobs = model.get_normalized_probs(model(one, torch.tensor([one.size(1)]), prev), log_probs=True)[0]
        expected = lprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(hyps[0]["positional_scores"], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("replacing", [False, True], ids=["prefix-token", "replacing-bos-eos"])
def test_generation_routes_step_zero_to_the_target_language(tmp_path, replacing):
    """fairseq-generate's path (task.inference_step): with --lang-tok-replacing-bos-eos the decoder's
    step-0 input is the target language token (bos_token), else ``</s>`` with the token forced as
    prefix; either way step 0 is routed to the target language, exactly as in training."""
    data = write_data(str(tmp_path))
    flags = LANGTOK + (["--lang-tok-replacing-bos-eos"] if replacing else [])
    _, task, model = setup(data, flags, extra=["-s", "en", "-t", "fr"])
    randomize_adapters(model)
    sample = batches(task, "test")[0]
    assert true_languages(task, sample) == (["en"] * sample["nsentences"], ["fr"] * sample["nsentences"])
    generator = task.build_generator([model], generation_args(data, flags, direction=("en", "fr")))
    seen = record_decoder_step0(model)
    hypos = task.inference_step(generator, [model], sample)
    step0, routed = seen[0]
    fr, eos = task.target_dictionary.index("__fr__"), task.target_dictionary.eos()
    assert step0.size(1) == 1 and step0.eq(fr if replacing else eos).all()
    assert routed == ["fr"] * step0.size(0)
    scores_match_training_forward(model, task, sample, hypos, bos=fr if replacing else eos)


def test_generation_of_mixed_directions_with_encoder_langtok_tgt(tmp_path):
    """--encoder-langtok tgt: the source names each sample's target language, so a mixed batch is
    routed per sample in generation without -t or lslo_tgt_lang."""
    data = write_data(str(tmp_path))
    flags = ["--encoder-langtok", "tgt", "--lang-tok-replacing-bos-eos"]
    _, task, model = setup(data, flags, routing=("tgt*2", "tgt*2"))
    randomize_adapters(model)
    sample = batches(task, "valid")[0]
    _, tgt = true_languages(task, sample)
    assert len(set(tgt)) > 1
    generator = task.build_generator([model], generation_args(data, flags))
    seen = record_decoder_step0(model)
    hypos = generator.generate([model], sample)  # no decoder langtok: bos is </s>
    _, routed = seen[0]
    assert routed == [t for t in tgt for _ in range(2)]  # beam 2: each sample's rows together
    scores_match_training_forward(model, task, sample, hypos, bos=task.target_dictionary.eos())


def test_a_batch_without_the_token_where_it_is_read_names_the_place(tmp_path):
    """Batches made with prepended tokens, given to a model built for --lang-tok-replacing-bos-eos:
    the error says which sample, which side and where the token was looked for."""
    data = write_data(str(tmp_path))
    _, prepended, _ = setup(data, LANGTOK)
    _, replacing, model = setup(data, LANGTOK + ["--lang-tok-replacing-bos-eos"])
    sample = batches(prepended, "valid")[0]
    with pytest.raises(RuntimeError, match=r"sample 0 of the batch has no source language token of --lslo-langs "
                                           r"\(fr,de,en\) at the last token of the source \(.*--encoder-langtok src "
                                           r"--decoder-langtok --lang-tok-replacing-bos-eos\)"):
        model(**sample["net_input"])
    with pytest.raises(RuntimeError, match=r"sample 0 of the batch has no target language token at the first token "
                                           r"of prev_output_tokens"):
        TargetLanguages.from_task_and_model(replacing, model).ids(sample)


def test_extra_data_with_other_language_tokens_is_refused(tmp_path):
    """--extra-data categories may use other tokens (--langtoks, e.g. __en_mined__): LSLo reads one kind."""
    data = write_data(str(tmp_path))
    mined = ["--extra-data", f"{{'mined': '{data}'}}", "--extra-lang-pairs", "{'mined': 'en-fr'}"]
    setup(data, LANGTOK, extra=mined + ["--langtoks", "{'mined': ('src', 'tgt')}"])  # the main data's tokens: fine
    with pytest.raises(LSLoConfigError, match=r"--extra-data category 'mined' has language tokens \('src.mined', "
                                              r"'tgt'\).*give 'mined' the main data's entry in --langtoks"):
        setup(data, LANGTOK, extra=mined + ["--langtoks", "{'mined': ('src.mined', 'tgt')}",
                                            "--langtoks-specs", "main,mined"])
