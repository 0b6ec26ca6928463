"""fairseq's own interfaces on LSLo and merged checkpoints (the plugin's fixes in inference/fairseq_fixes.py):
from_pretrained().translate(), fairseq-interactive and fairseq-generate with its default flags."""
from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.testing.generate import fairseq_generate, generate_args


@pytest.fixture(scope="module")
def merged(tiny_run, tmp_path_factory):
    """en-de merged by lslo-merge, in a folder of its own with the published files beside it."""
    from fairseq_lslo.cli import merge

    folder = tmp_path_factory.mktemp("merged")
    path = str(folder / "en-de.pt")
    assert merge.main([tiny_run.ckpt, "-s", "en", "-t", "de", "-o", path]) == 0
    return path


@pytest.fixture(scope="module")
def reference(tiny_run, merged):
    """fairseq-generate's en-de hypotheses (explicit --required-batch-size-multiple 1), LSLo and merged."""
    out = {}
    for name, ckpt in (("lslo", tiny_run.ckpt), ("merged", merged)):
        argv = generate_args(tiny_run.data, ckpt, "en", "de", tiny_run.pairs, tiny_run.env()["USER_DIR"],
                             extra=["--required-batch-size-multiple", "1"])
        out[name] = fairseq_generate(argv)
    return out


def test_input(tiny_run):
    with open(os.path.join(tiny_run.raw, "test.en"), encoding="utf-8") as f:
        return f.read().splitlines()


def detok(pieces: str) -> str:
    return pieces.replace(" ", "").replace("\u2581", " ").strip()


def hub(tiny_run, path, **overrides):
    from fairseq.models.transformer import TransformerModel

    kwargs = dict(data_name_or_path=tiny_run.data, user_dir=tiny_run.env()["USER_DIR"],
                  task="translation_multi_simple_epoch", lang_pairs=",".join(tiny_run.pairs), source_lang="en",
                  target_lang="de", encoder_langtok="src", decoder_langtok=True, bpe="sentencepiece",
                  sentencepiece_model=tiny_run.spm, cpu=True)
    kwargs.update(overrides)
    return TransformerModel.from_pretrained(os.path.dirname(path), checkpoint_file=os.path.basename(path), **kwargs)


def test_from_pretrained_translate_equals_fairseq_generate(tiny_run, merged, reference):
    texts = test_input(tiny_run)
    for name, path in (("lslo", tiny_run.ckpt), ("merged", merged)):
        out = hub(tiny_run, path).translate(texts, beam=5)
        assert out == [detok(reference[name][i].pieces) for i in range(len(texts))], name


def test_from_pretrained_passes_prefix_allowed_tokens_fn(tiny_run):
    """fairseq 0.12's build_generator of this task lacked the keyword (TypeError); now it constrains the search."""
    model = hub(tiny_run, tiny_run.ckpt)
    tokens = [model.encode(t) for t in test_input(tiny_run)[:6]]
    free = [model.string(h[0]["tokens"]).split() for h in model.generate(tokens, beam=5)]
    banned_piece = max({p for hyp in free for p in hyp if not p.startswith("\u2581")},
                       key=lambda p: sum(hyp.count(p) for hyp in free))
    banned = model.tgt_dict.index(banned_piece)
    allowed = [i for i in range(len(model.tgt_dict)) if i != banned]
    calls = []

    def allow(batch_id, prefix):
        calls.append(batch_id)
        return allowed

    constrained = [model.string(h[0]["tokens"]).split()
                   for h in model.generate(tokens, beam=5, prefix_allowed_tokens_fn=allow)]
    assert calls and all(banned_piece not in hyp for hyp in constrained)
    assert constrained != free


def test_langs_as_a_string(tiny_run):
    texts = test_input(tiny_run)[:4]
    assert hub(tiny_run, tiny_run.ckpt, langs="de,en,fr").translate(texts) == hub(tiny_run, tiny_run.ckpt).translate(texts)
    with pytest.raises(LSLoConfigError, match=r"langs=en,de,fr: .*trained with the language list de,en,fr"):
        hub(tiny_run, tiny_run.ckpt, langs="en,de,fr")


def test_merged_refuses_another_direction_in_from_pretrained(tiny_run, merged):
    with pytest.raises(LSLoConfigError, match=r"merged for en-de .*asked for fr-de"):
        hub(tiny_run, merged, source_lang="fr")


def interactive(argv, text_file):
    """fairseq-interactive in this process; {id: (score, detokenized)}."""
    from fairseq import options
    from fairseq_cli import interactive as fairseq_interactive

    parser = options.get_interactive_generation_parser()
    args = options.parse_args_and_arch(parser, [*argv, "--input", text_file])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        fairseq_interactive.main(args)
    return {int(m.group(1)): m.group(3) for m in re.finditer(r"^D-(\d+)\t(\S+)\t(.*)$", buffer.getvalue(), flags=re.M)}


def interactive_argv(tiny_run, ckpt, langs=("-s", "en", "-t", "de")):
    return [tiny_run.data, "--user-dir", tiny_run.env()["USER_DIR"], *tiny_run.task_flags(), *langs, "--path", ckpt,
            "--beam", "5", "--cpu", "--bpe", "sentencepiece", "--sentencepiece-model", tiny_run.spm]


def test_fairseq_interactive_equals_fairseq_generate(tiny_run, merged, reference):
    text_file = os.path.join(tiny_run.raw, "test.en")
    n = len(test_input(tiny_run))
    for name, path in (("lslo", tiny_run.ckpt), ("merged", merged)):
        out = interactive(interactive_argv(tiny_run, path), text_file)
        assert [out[i] for i in range(n)] == [detok(reference[name][i].pieces) for i in range(n)], name


def test_fairseq_interactive_errors(tiny_run, merged):
    text_file = os.path.join(tiny_run.raw, "test.en")
    with pytest.raises(LSLoConfigError, match=r"-s/--source-lang and -t/--target-lang"):
        interactive(interactive_argv(tiny_run, tiny_run.ckpt, langs=()), text_file)
    with pytest.raises(LSLoConfigError, match=r"merged for en-de .*asked for en-fr"):
        interactive(interactive_argv(tiny_run, merged, langs=("-s", "en", "-t", "fr")), text_file)


def test_fairseq_generate_decodes_every_sentence_with_default_flags(tiny_run, merged, reference):
    """fairseq-fixed's default --required-batch-size-multiple 8 dropped 4 of the 12 test sentences."""
    n = len(test_input(tiny_run))
    assert n % 8 != 0
    for name, path in (("lslo", tiny_run.ckpt), ("merged", merged)):
        out = fairseq_generate(generate_args(tiny_run.data, path, "en", "de", tiny_run.pairs, tiny_run.env()["USER_DIR"]))
        assert sorted(out) == list(range(n)), name
        assert [out[i].pieces for i in range(n)] == [reference[name][i].pieces for i in range(n)], name


def test_fairseq_generate_refuses_a_merged_checkpoint_for_another_direction(tiny_run, merged):
    with pytest.raises(LSLoConfigError, match=r"merged for en-de .*asked for fr-de"):
        fairseq_generate(generate_args(tiny_run.data, merged, "fr", "de", tiny_run.pairs, tiny_run.env()["USER_DIR"]))


def test_every_sentence_in_decoding_only(tiny_run):
    """The fix applies to decoding (-s/-t): fairseq-train's batches stay as fairseq makes them."""
    from fairseq import options, tasks

    def sentences(langs):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [tiny_run.data, *tiny_run.task_flags(), *langs, "--arch",
                                                    "transformer", *tiny_run.arch_flags, "--cpu",
                                                    "--max-source-positions", "64", "--max-target-positions", "64"])
        task = tasks.setup_task(args)
        task.load_dataset("valid")
        itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=10, required_batch_size_multiple=5)
        return task.training, sum(len(b["id"]) for b in itr.next_epoch_itr(shuffle=False))

    assert sentences([]) == (True, 140)  # 6 x 24 sentences: fairseq-fixed drops the short last batch in training
    assert sentences(["-s", "en", "-t", "de"]) == (False, 24)  # decoding: every sentence
