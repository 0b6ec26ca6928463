"""Merged directions served by CTranslate2 and Hugging Face transformers give fairseq's outputs.

Needs the ``deploy`` extra (ctranslate2, transformers), which ``make test`` installs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, LSLO_FLAGS, ROOT, TASK, cli_env, lang_tok, make_batch, parse, randomize_adapters, run
from fairseq_lslo.deploy.m2m100 import require

PRE_NORM = ["--encoder-normalize-before", "--decoder-normalize-before"]
ROUTING = ["--lslo-encoder-routing", "src,tgt", "--lslo-decoder-routing", "tgt*2", "--lslo-encoder-positions",
           "fc1,fc2,v,q", "--lslo-decoder-positions", "fc1,fc2,k,v,cross_v"]


def generate_lines(data: str, path: str, beam: int, src: str = "en", tgt: str = "de") -> dict:
    """fairseq-generate (no --user-dir) on a merged checkpoint: {id: (source tokens, hypothesis tokens)}."""
    out = run([os.path.join(BIN, "fairseq-generate"), data, *TASK, "-s", src, "-t", tgt, "--path", path, "--cpu",
               "--beam", str(beam), "--gen-subset", "test", "--batch-size", "16"])
    src_lines = {ln.split("\t")[0][2:]: ln.split("\t")[1] for ln in out.splitlines() if ln.startswith("S-")}
    hyps = {ln.split("\t")[0][2:]: ln.split("\t")[2] for ln in out.splitlines() if ln.startswith("H-")}
    assert len(hyps) >= 6 and hyps.keys() == src_lines.keys(), out[-2000:]
    return {int(i): (src_lines[i].split(), hyps[i].split()) for i in hyps}


@pytest.fixture(scope="module")
def merged_en_de(trained, tmp_path_factory):
    """The session's trained LSLo model (post-norm, 32 dims), en->de merged by the lslo-merge CLI."""
    out = str(tmp_path_factory.mktemp("interop") / "en-de.pt")
    ckpt = os.path.join(trained.lslo_dir, "checkpoint_best.pt")
    run([sys.executable, "-m", "fairseq_lslo.cli.merge", ckpt, "-s", "en", "-t", "de", "-o", out])
    return out


def test_ctranslate2_converts_the_merged_checkpoint_and_translates_like_fairseq(trained, merged_en_de, tmp_path):
    ctranslate2 = require("ctranslate2", "this test")
    ct2_dir = str(tmp_path / "ct2")
    # CTranslate2's own converter, without --user_dir or --unsafe_deserialization, and without -s/-t
    # (the merged checkpoint names its direction)
    run([os.path.join(BIN, "ct2-fairseq-converter"), "--model_path", merged_en_de, "--data_dir", trained.data,
         "--output_dir", ct2_dir])
    translator = ctranslate2.Translator(ct2_dir, device="cpu", inter_threads=1, intra_threads=1)
    outputs = set()
    for beam in (1, 3):
        fairseq = generate_lines(trained.data, merged_en_de, beam)
        ids = sorted(fairseq)
        sources = [fairseq[i][0] for i in ids]
        assert all(s[0] == "__en__" for s in sources)
        results = translator.translate_batch(sources, target_prefix=[["__de__"]] * len(ids), beam_size=beam,
                                             length_penalty=1.0, max_decoding_length=200)
        ct2 = [r.hypotheses[0] for r in results]
        assert all(h[0] == "__de__" for h in ct2)
        assert [h[1:] for h in ct2] == [fairseq[i][1] for i in ids], f"beam {beam}"
        outputs |= {" ".join(fairseq[i][1]) for i in ids}
    assert len(outputs) >= 3  # the sentences get different translations: the comparison is not vacuous


# --- Hugging Face --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prenorm(dict_dir, tmp_path_factory):
    """A pre-norm LSLo model (random adapters) saved as fairseq's trainer saves a checkpoint."""
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = parse(dict_dir, "lslo_transformer", LSLO_FLAGS + PRE_NORM + ROUTING)
    torch.manual_seed(1)
    task = tasks.setup_task(args)
    model = task.build_model(args).eval()
    randomize_adapters(model, seed=3, scale=0.4)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # large random base matrices: greedy search does not just repeat one token
        for p in model.parameters():
            if not p.requires_grad and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 3 / p.shape[1] ** 0.5)
    root = tmp_path_factory.mktemp("hf")
    ckpt = str(root / "lslo.pt")
    cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True)
    torch.save({"args": None, "cfg": cfg, "model": model.state_dict()}, ckpt)
    return {"root": root, "data": dict_dir, "ckpt": ckpt, "task": task, "model": model}


def export(prenorm, name: str, *extra: str) -> str:
    from fairseq_lslo.cli.export_hf import main

    out = str(prenorm["root"] / name)
    if not os.path.isdir(out):
        assert main([prenorm["ckpt"], "-s", "en", "-t", "de", "--data", prenorm["data"], "-o", out, *extra]) == 0
    return out


def load_hf(path: str):
    transformers = require("transformers", "this test")
    return transformers.M2M100ForConditionalGeneration.from_pretrained(path).eval()


def test_hf_export_writes_an_m2m100_directory_with_fairseq_special_tokens(prenorm):
    out = export(prenorm, "en-de")
    assert {"config.json", "generation_config.json", "model.safetensors"} <= set(os.listdir(out))
    d = prenorm["task"].target_dictionary
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == "m2m_100" and config["d_model"] == 16 and config["encoder_layers"] == 2
    assert config["vocab_size"] == len(d) and config["scale_embedding"] is True
    assert config["pad_token_id"] == d.pad() and config["decoder_start_token_id"] == d.eos()
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert generation["forced_bos_token_id"] == lang_tok(prenorm["task"], "de")
    assert generation["decoder_start_token_id"] == d.eos()


def test_hf_export_gets_the_modes_open_would_give(prenorm, tmp_path):
    """Directory 0755 and files 0644 under umask 022 (not mkdtemp's 0700 nor 0600): others can read it."""
    _, spm_path = train_spm(tmp_path)
    old = os.umask(0o022)
    try:
        out = export(prenorm, "modes", "--spm", spm_path)
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o755
    modes = {name: os.stat(os.path.join(out, name)).st_mode & 0o777 for name in os.listdir(out)}
    assert "model.safetensors" in modes and "tokenizer_config.json" in modes
    assert set(modes.values()) == {0o644}, modes


def test_hf_logits_equal_the_lslo_models_for_the_direction(prenorm):
    hf = load_hf(export(prenorm, "en-de"))
    task, model = prenorm["task"], prenorm["model"]
    pad = task.source_dictionary.pad()
    batch, _ = make_batch(task, ["en-de"] * 4, [3, 7, 1, 5], [4, 2, 6, 3], seed=5)  # left-padded sources
    with torch.no_grad():
        want = model(**batch)[0]
        got = hf(input_ids=batch["src_tokens"], attention_mask=batch["src_tokens"].ne(pad).long(),
                 decoder_input_ids=batch["prev_output_tokens"],
                 decoder_attention_mask=batch["prev_output_tokens"].ne(pad).long()).logits
        other, _ = make_batch(task, ["fr-de"] * 4, [3, 7, 1, 5], [4, 2, 6, 3], seed=5)
        fr_de = model(**other)[0]  # the same words from another source language: other adapters
    keep = batch["prev_output_tokens"].ne(pad)
    assert got.shape == want.shape
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-4)
    assert (fr_de[keep] - want[keep]).abs().max() > 1e-2  # the adapters matter: equality is not vacuous


def test_hf_greedy_generation_equals_fairseqs(prenorm, tmp_path):
    from fairseq import checkpoint_utils
    from fairseq.sequence_generator import SequenceGenerator

    from fairseq_lslo.cli.merge import main as merge

    hf = load_hf(export(prenorm, "en-de"))
    merged = str(tmp_path / "en-de.pt")
    assert merge([prenorm["ckpt"], "-s", "en", "-t", "de", "-o", merged]) == 0
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([merged], arg_overrides={"data": prenorm["data"]})
    model.eval()
    d = task.source_dictionary
    batch, _ = make_batch(prenorm["task"], ["en-de"] * 6, [2, 5, 3, 8, 4, 6], [1] * 6, seed=11)
    src = batch["src_tokens"]
    max_len = 12
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_b=max_len)
    sample = {"net_input": {"src_tokens": src, "src_lengths": batch["src_lengths"]}}
    prefix = torch.full((src.shape[0], 1), lang_tok(task, "de"))
    with torch.no_grad():
        hyps = generator.generate([model], sample, prefix_tokens=prefix)
        out = hf.generate(input_ids=src, attention_mask=src.ne(d.pad()).long(), num_beams=1, do_sample=False,
                          max_new_tokens=max_len)
    want = [[t for t in h[0]["tokens"].tolist() if t != d.eos()] for h in hyps]
    got = [[t for t in row[1:].tolist() if t not in (d.eos(), d.pad())] for row in out]
    assert all(w[0] == lang_tok(task, "de") for w in want)
    assert got == want
    assert len({tuple(w) for w in want}) >= 3


def test_hf_export_refuses_a_post_norm_model(trained, tmp_path, capsys):
    from fairseq_lslo.cli.export_hf import main

    out = tmp_path / "hf"
    ckpt = os.path.join(trained.lslo_dir, "checkpoint_best.pt")
    assert main([ckpt, "-s", "en", "-t", "de", "--data", trained.data, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "post-norm encoder (--encoder-normalize-before not set)" in err and "pre-norm" in err
    assert not out.exists()


def test_hf_export_bad_input_names_the_file_or_direction(prenorm, tmp_path, capsys):
    from fairseq_lslo.cli.export_hf import main

    base = [prenorm["ckpt"], "--data", prenorm["data"]]
    out = tmp_path / "hf"
    assert main(base + ["-s", "en", "-t", "xx", "-o", str(out)]) == 2
    assert "--target-lang 'xx' is not a language of this checkpoint" in capsys.readouterr().err
    missing = str(tmp_path / "nope.model")
    assert main(base + ["-s", "en", "-t", "de", "--spm", missing, "-o", str(out)]) == 2
    assert f"--spm {missing}: no such SentencePiece model file" in capsys.readouterr().err
    assert not out.exists()
    # an existing export is replaced only by a complete one: a failing run leaves it as it was
    good = export(prenorm, "en-de")
    before = {n: open(os.path.join(good, n), "rb").read() for n in os.listdir(good)}
    assert main(base + ["-s", "en", "-t", "de", "--data", str(tmp_path / "no-data"), "-o", good]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert {n: open(os.path.join(good, n), "rb").read() for n in os.listdir(good)} == before


def test_the_plugin_never_imports_the_deploy_packages():
    code = ("import sys, fairseq_lslo, fairseq_lslo.cli.merge, fairseq_lslo.cli.export_hf; "
            "print(sorted(m for m in ('transformers', 'ctranslate2', 'aiohttp') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_missing_deploy_package_is_named_with_the_extra_to_install():
    from fairseq_lslo.deploy.m2m100 import require

    with pytest.raises(ImportError, match=r"needs the Python package 'no_such_pkg'.*\[deploy\]"):
        require("no_such_pkg.sub", "the Hugging Face export")


def train_spm(tmp_path):
    """A tiny BPE SentencePiece model -> (processor, path)."""
    import sentencepiece as spm

    text = tmp_path / "corpus.txt"
    words = ["house", "garden", "river", "mountain", "village", "bridge", "window", "street"]
    text.write_text("\n".join(" ".join(words[(i * k) % 8] for k in range(1, 7)) for i in range(40)) + "\n")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=40,
                                   model_type="bpe", minloglevel=2)
    return spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model")), str(tmp_path / "spm.model")


def test_tokenizer_files_encode_as_fairseq_does(tmp_path):
    """M2M100Tokenizer written for a fairseq dictionary: its ids are fairseq's, renumbered as the model is."""
    from fairseq.data import Dictionary

    from fairseq_lslo.deploy.m2m100 import tokenizer_numbering, write_tokenizer

    sp, spm_path = train_spm(tmp_path)
    d = Dictionary()
    for i in range(sp.get_piece_size()):
        if not sp.is_control(i) and not sp.is_unknown(i):
            d.add_symbol(sp.id_to_piece(i))
    for code in ("de", "en", "fr", "kam"):  # as fairseq adds them (sorted); kam is not in M2M-100's list
        d.add_symbol(f"__{code}__")
    vocab, order = tokenizer_numbering(d.symbols)
    exported = {f: n for n, f in enumerate(order) if f is not None}
    assert sorted(exported) == list(range(len(d)))  # every fairseq symbol has exactly one exported id
    out = tmp_path / "tok"
    out.mkdir()
    write_tokenizer(str(out), vocab, spm_path, "en", "de")
    tok = require("transformers", "this test").AutoTokenizer.from_pretrained(str(out), src_lang="en", tgt_lang="de")
    sentence = "garden river village bridge"
    fairseq_ids = [d.index("__en__")] + [d.index(p) for p in sp.encode(sentence, out_type=str)] + [d.eos()]
    assert d.unk() not in fairseq_ids
    assert tok(sentence).input_ids == [exported[i] for i in fairseq_ids]
    assert tok(text_target=sentence).input_ids == [exported[d.index("__de__")]] + [exported[i] for i in fairseq_ids[1:]]
    assert tok.get_lang_id("fr") == exported[d.index("__fr__")]
    assert exported[d.index("__kam__")] >= len(vocab) + 100  # after M2M100Tokenizer's 100 languages
    assert tok.decode([exported[i] for i in fairseq_ids[1:-1]]) == sentence
    # what generate() returns, </s> __de__ ... </s>, decodes without language tokens (as fairseq strips them)
    generated = [exported[d.eos()], exported[d.index("__de__")]] + [exported[i] for i in fairseq_ids[1:]]
    assert tok.batch_decode([generated], skip_special_tokens=True) == [sentence]


def test_hf_export_with_tokenizer_renumbers_model_and_tokenizer_alike(prenorm, tmp_path):
    from fairseq_lslo.deploy.m2m100 import tokenizer_numbering

    _, spm_path = train_spm(tmp_path)
    out = export(prenorm, "en-de-tok", "--spm", spm_path)
    assert {"vocab.json", "sentencepiece.bpe.model", "tokenizer_config.json"} <= set(os.listdir(out))
    hf = load_hf(out)
    task, model = prenorm["task"], prenorm["model"]
    _, order = tokenizer_numbering(task.target_dictionary.symbols)
    exported = torch.tensor([order.index(i) for i in range(len(task.target_dictionary))])
    tok = require("transformers", "this test").AutoTokenizer.from_pretrained(out, src_lang="en")
    assert hf.generation_config.forced_bos_token_id == tok.get_lang_id("de") == exported[lang_tok(task, "de")]
    assert tok.convert_tokens_to_ids("w7") == exported[task.target_dictionary.index("w7")]
    batch, _ = make_batch(task, ["en-de"] * 3, [4, 2, 6], [3, 5, 2], seed=9)
    pad = task.source_dictionary.pad()
    with torch.no_grad():
        want = model(**batch)[0]
        got = hf(input_ids=exported[batch["src_tokens"]], attention_mask=batch["src_tokens"].ne(pad).long(),
                 decoder_input_ids=exported[batch["prev_output_tokens"]],
                 decoder_attention_mask=batch["prev_output_tokens"].ne(pad).long()).logits
    keep = batch["prev_output_tokens"].ne(pad)
    torch.testing.assert_close(got[..., exported][keep], want[keep], rtol=0, atol=1e-4)


def test_configurations_m2m100_cannot_express_are_named():
    from fairseq_lslo.deploy.m2m100 import unsupported

    ok = dict(encoder_normalize_before=True, decoder_normalize_before=True, encoder_embed_dim=16,
              decoder_embed_dim=16, decoder_input_dim=16, decoder_output_dim=16, activation_fn="relu")
    assert unsupported(ok) == []
    cases = {
        "decoder_normalize_before": (False, "post-norm decoder"),
        "encoder_learned_pos": (True, "learned encoder positions"),
        "layernorm_embedding": (True, "an embedding layer norm (--layernorm-embedding)"),
        "no_decoder_final_norm": (True, "no final decoder layer norm"),
        "decoder_output_dim": (32, "embedding dimensions differ"),
        "activation_fn": ("relu_squared", "--activation-fn relu_squared"),
    }
    for key, (value, message) in cases.items():
        problems = unsupported(dict(ok, **{key: value}))
        assert len(problems) == 1 and message in problems[0], (key, problems)


def test_unshared_embeddings_and_unknown_parameters_are_refused():
    from fairseq_lslo.deploy.m2m100 import UnsupportedForM2M100, m2m100_state

    emb = torch.randn(10, 4)
    state = {"encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": emb.clone(),
             "decoder.output_projection.weight": emb.clone(), "encoder.layer_norm.weight": torch.ones(4),
             "encoder.version": torch.tensor([3.0])}
    assert sorted(m2m100_state(state)) == ["model.encoder.layer_norm.weight", "model.shared.weight"]
    with pytest.raises(UnsupportedForM2M100, match="decoder.output_projection.weight differs.*share-all-embeddings"):
        m2m100_state(dict(state, **{"decoder.output_projection.weight": emb + 1}))
    with pytest.raises(UnsupportedForM2M100, match="no M2M-100 counterpart: encoder.layernorm_embedding.weight"):
        m2m100_state(dict(state, **{"encoder.layernorm_embedding.weight": torch.ones(4)}))
