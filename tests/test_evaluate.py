"""lslo-evaluate: one model load for many directions gives fairseq-generate's hypotheses; resume, provenance."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import BIN, LANGS, PAIRS, ROOT, TASK, cli_env, run

DIRECTIONS = ["en-fr", "de-en", "fr-de", "en-de"]
GEN = ["--gen-subset", "test", "--beam", "3", "--max-len-b", "12", "--cpu"]


def evaluate(data, out, *extra, expect_ok=True, subprocess_run=False):
    """lslo-evaluate as a command (subprocess_run) or in this process (no start-up cost): its stderr."""
    argv = [data, *TASK, *GEN, "--out-dir", str(out), "--directions", ",".join(DIRECTIONS), *extra]
    if subprocess_run:
        proc = subprocess.run([sys.executable, "-m", "fairseq_lslo.cli.evaluate", *argv], capture_output=True,
                              text=True, env=cli_env(), cwd=ROOT)
        assert (proc.returncode == 0) == expect_ok, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stderr
    from fairseq_lslo.cli.evaluate import main

    err, out_text = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out_text):
        code = main(argv)
    assert (code == 0) == expect_ok, out_text.getvalue()[-3000:] + err.getvalue()[-3000:]
    return err.getvalue()


def generate(data, path, pair, *extra):
    """fairseq-generate for one direction: {id: (H text, score)}."""
    src, tgt = pair.split("-")
    out = run([os.path.join(BIN, "fairseq-generate"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"), *TASK,
               "-s", src, "-t", tgt, "--path", path, *GEN, "--batch-size", "16", "--required-batch-size-multiple", "1",
               *extra])
    return parse_gen(out)


def parse_gen(text):
    hyps = {}
    for line in text.splitlines():
        if line.startswith("D-"):
            head, score, hyp = line.split("\t")
            hyps[int(head[2:])] = (hyp, float(score))
    return hyps


def assert_same(ours, theirs, pair):
    assert sorted(ours) == sorted(theirs) and len(ours) == 12, pair
    assert {i: h for i, (h, _) in ours.items()} == {i: h for i, (h, _) in theirs.items()}, pair
    for i in ours:  # mixed batches pad differently: scores agree up to float rounding
        assert abs(ours[i][1] - theirs[i][1]) < 1e-4, (pair, i)


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    """The session's LSLo checkpoint, its exported adapters, references and langs.tsv for scoring."""
    root = tmp_path_factory.mktemp("evaluate")
    data = trained.data
    with open(os.path.join(data, "langs.tsv"), "w") as f:
        f.write("en\teng\thigh\nfr\tfra\thigh\nde\tdeu\tlow\n")
    lslo = os.path.join(trained.lslo_dir, "checkpoint_best.pt")
    adapters = str(root / "adapters.safetensors")
    run([sys.executable, "-m", "fairseq_lslo.cli.export", lslo, "-o", adapters])
    spm_text = root / "spm.txt"
    spm_text.write_text(open(os.path.join(trained.root, "raw", "train.en")).read()
                        + open(os.path.join(trained.root, "raw", "train.de")).read())
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(spm_text), model_prefix=str(root / "sp"), vocab_size=40,
                                   hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return {"root": root, "data": data, "lslo": lslo, "base": os.path.join(trained.base_dir, "checkpoint_best.pt"),
            "adapters": adapters, "raw": os.path.join(trained.root, "raw"), "spm": str(root / "sp.model")}


def test_one_process_equals_fairseq_generate_per_direction(setup):
    out = setup["root"] / "eval"
    # batches of 5 sentences: 12 per direction, so batches mix two directions at every boundary
    err = evaluate(setup["data"], out, "--path", setup["lslo"], "--batch-size", "5", "--raw", setup["raw"],
                   "--spm-model", setup["spm"], subprocess_run=True)
    assert "4 to decode" in err and "sentences" in err
    for pair in DIRECTIONS:
        text = (out / "gen" / f"{pair}.gen").read_text()
        assert_same(parse_gen(text), generate(setup["data"], setup["lslo"], pair), pair)
        record = json.loads((out / "gen" / f"{pair}.gen.json").read_text())
        assert record["direction"] == pair and record["sentences"] == 12 and record["settings"]["beam"] == 3
        assert record["model"]["files"][0]["path"] == os.path.abspath(setup["lslo"])
    rows = (out / "scores.tsv").read_text().splitlines()
    assert [r.split("\t")[:2] for r in rows[1:]] == [p.split("-") for p in DIRECTIONS]
    assert "| **high** |" in (out / "scores.md").read_text()
    assert (out / "heatmap.png").stat().st_size > 1000

    # a rerun decodes nothing and leaves the hypothesis files alone
    before = {p: os.stat(out / "gen" / f"{p}.gen").st_mtime_ns for p in DIRECTIONS}
    err = evaluate(setup["data"], out, "--path", setup["lslo"], "--batch-size", "5", "--raw", setup["raw"],
                   "--spm-model", setup["spm"])
    assert "4 already decoded, 0 to decode" in err
    assert before == {p: os.stat(out / "gen" / f"{p}.gen").st_mtime_ns for p in DIRECTIONS}


def test_base_checkpoint_with_exported_adapters(setup):
    out = setup["root"] / "eval-adapters"
    evaluate(setup["data"], out, "--path", setup["base"], "--lslo-adapters", setup["adapters"], "--max-tokens", "60",
             "--no-score")
    overrides = ("{'arch': 'lslo_transformer', '_name': 'lslo_transformer', "
                 f"'lslo_adapters': '{setup['adapters']}'}}")
    for pair in DIRECTIONS[:3]:
        theirs = generate(setup["data"], setup["base"], pair, "--model-overrides", overrides)
        assert_same(parse_gen((out / "gen" / f"{pair}.gen").read_text()), theirs, pair)
    record = json.loads((out / "gen" / "en-fr.gen.json").read_text())
    assert sorted(f["role"] for f in record["model"]["files"]) == ["adapters", "checkpoint"]

    # the plain base model alone (METHOD=full evaluates a plain transformer): no routing, same prefixes
    plain = setup["root"] / "eval-plain"
    evaluate(setup["data"], plain, "--path", setup["base"], "--max-tokens", "60", "--no-score")
    theirs = generate(setup["data"], setup["base"], "de-en")
    assert_same(parse_gen((plain / "gen" / "de-en.gen").read_text()), theirs, "de-en")


def test_shards_resume_and_refuse_another_checkpoint(setup):
    out = setup["root"] / "eval-shards"
    common = ["--path", setup["lslo"], "--batch-size", "7"]
    evaluate(setup["data"], out, *common, "--shard", "1/2")
    assert sorted(os.listdir(out / "gen")) == ["de-en.gen", "de-en.gen.json", "en-de.gen", "en-de.gen.json"]
    # a killed run: one direction decoded, nothing else; the rerun decodes only what is missing
    os.remove(out / "gen" / "en-de.gen")
    kept = os.stat(out / "gen" / "de-en.gen").st_mtime_ns
    err = evaluate(setup["data"], out, *common, "--shard", "1/2")
    assert "1 already decoded, 1 to decode" in err
    assert os.stat(out / "gen" / "de-en.gen").st_mtime_ns == kept
    evaluate(setup["data"], out, *common, "--shard", "0/2")

    # the table of all shards, from lslo_data_prep.score, checked against the checkpoint
    score = [sys.executable, "-m", "lslo_data_prep.score", "--data", setup["data"], "--raw", setup["raw"], "--gen-dir",
             str(out / "gen"), "--out-dir", str(out), "--spm-model", setup["spm"], "--pairs", ",".join(DIRECTIONS)]
    run(score + ["--checkpoint", setup["lslo"]])
    table = (out / "scores.tsv").read_text()
    proc = subprocess.run(score + ["--checkpoint", setup["base"]], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env())
    assert proc.returncode == 2 and "en-fr.gen was decoded by another model" in proc.stderr
    assert (out / "scores.tsv").read_text() == table  # nothing already scored was overwritten

    # resuming with another checkpoint: refused, the file named, nothing overwritten
    gen = (out / "gen" / "en-fr.gen").read_text()
    err = evaluate(setup["data"], out, "--path", setup["base"], "--lslo-adapters", setup["adapters"],
                   "--batch-size", "7", "--raw", setup["raw"], "--spm-model", setup["spm"], expect_ok=False)
    assert f"{out / 'gen' / 'en-fr.gen'} was decoded by another model" in err
    assert (out / "gen" / "en-fr.gen").read_text() == gen and (out / "scores.tsv").read_text() == table


def test_bad_input_names_direction_and_file(setup, tmp_path, capsys):
    from fairseq_lslo.cli.evaluate import main

    def err(*argv):
        assert main([setup["data"], *argv, *GEN, "--path", setup["lslo"], "--out-dir", str(tmp_path)]) == 2
        return capsys.readouterr().err

    assert "--directions: en-xx is not one of --lang-pairs" in err(*TASK, "--directions", "en-xx")
    text = err(*TASK[:2], "--lang-pairs", "en-fr,en-it", "--encoder-langtok", "src", "--decoder-langtok", "--no-score")
    assert "direction en-it: 'it' is not a language of" in text and "checkpoint_best.pt (en, fr, de)" in text
    missing = str(tmp_path / "nope.model")
    assert f"--spm-model: {missing} does not exist" in err(*TASK, "--raw", setup["raw"], "--spm-model", missing)
    assert "no references for direction" in err(*TASK, "--raw", str(tmp_path), "--spm-model", setup["spm"])
    assert not (tmp_path / "gen").exists()  # all checked before any decoding


def test_batches_finish_directions_one_after_another():
    """Mixed batches only where a direction ends; lengths sorted; --max-tokens respected."""
    from fairseq_lslo.evaluation.decode import Direction, plan_batches

    class Data:
        def __init__(self, lengths):
            self.lengths = lengths

        def __len__(self):
            return len(self.lengths)

        def num_tokens(self, i):
            return self.lengths[i]

        def size(self, i):
            return self.lengths[i], self.lengths[i]

    lengths = [[5, 9, 3, 7, 4, 8], [6, 2, 9, 9, 5], [4, 4, 10, 1]]
    directions = [Direction(f"d{k}", Data(x), 0) for k, x in enumerate(lengths)]
    batches = plan_batches(directions, 20, None, (1024, 1024))
    flat = [item for batch in batches for item in batch]
    assert sorted(flat) == [(k, i) for k, x in enumerate(lengths) for i in range(len(x))]
    assert [k for k, _ in flat] == sorted(k for k, _ in flat)  # one direction after another
    for k, x in enumerate(lengths):  # ascending, then descending, then ascending
        seq = [x[i] for d, i in flat if d == k]
        assert seq == (sorted(seq) if k % 2 == 0 else sorted(seq, reverse=True))
    assert any(len({k for k, _ in batch}) == 2 for batch in batches)  # a batch across a boundary
    assert all(len(b) * max(lengths[k][i] for k, i in b) <= 20 for b in batches)
    with pytest.raises(ValueError, match="direction d2: sentence 2 has 10 tokens, more than --max-tokens 9"):
        plan_batches(directions[2:], 9, None, (1024, 1024))


def test_progress_is_plain_text_without_a_terminal():
    import io

    from fairseq_lslo.evaluation.decode import Progress

    stream = io.StringIO()
    progress = Progress(40, stream, interval=0.0)
    progress.update(10, "en-fr")
    progress.message("en-fr: 10 sentences done")
    progress.update(30)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "10/40 sentences (25.0%)" in lines[0] and "ETA" in lines[0]
    assert lines[1] == "en-fr: 10 sentences done" and "40/40 sentences (100.0%)" in lines[-1]
