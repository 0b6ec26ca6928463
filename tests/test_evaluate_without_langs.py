"""lslo-evaluate on data not made by data_prep: groups from the checkpoint, optional FLORES codes, one-line errors."""
from __future__ import annotations

import contextlib
import io
import os

GEN = ["--gen-subset", "test", "--beam", "2", "--max-len-b", "8", "--cpu", "--remove-bpe", "sentencepiece"]
DIRECTIONS = "en-de,de-fr"


def argv(run, out, *extra, data=None):
    return [data or run.data, *run.task_flags(), "--path", run.ckpt, *GEN, "--out-dir", str(out),
            "--directions", DIRECTIONS, *extra]


def evaluate(*args):
    """(exit status, stdout, stderr) of lslo-evaluate run in this process."""
    from fairseq_lslo.cli.evaluate import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def rows(out):
    lines = (out / "scores.tsv").read_text().splitlines()
    return {tuple(r.split("\t")[:2]): tuple(r.split("\t")[2:4]) for r in lines[1:]}


def test_groups_come_from_the_checkpoint_then_from_lang_groups(tiny_run, tmp_path):
    assert not os.path.exists(os.path.join(tiny_run.data, "langs.tsv"))  # data not made by data_prep
    out = tmp_path / "eval"
    score = ["--raw", tiny_run.raw, "--spm-model", tiny_run.spm]
    code, stdout, err = evaluate(*argv(tiny_run, out, *score))
    assert code == 0, err[-3000:]
    # the checkpoint was trained with --lslo-langs en:high,fr:high,de:low
    assert rows(out) == {("en", "de"): ("high", "low"), ("de", "fr"): ("low", "high")}
    assert "| **low** |" in (out / "scores.md").read_text() and "2 directions scored" in stdout

    # a group file without FLORES codes (code<TAB>group) wins; the hypotheses are not decoded again
    groups = tmp_path / "groups.tsv"
    groups.write_text("en\tgermanic\nde\tgermanic\nfr\tromance\n")
    code, _, err = evaluate(*argv(tiny_run, out, *score, "--lang-groups", str(groups)))
    assert code == 0 and "2 already decoded, 0 to decode" in err, err[-3000:]
    assert rows(out) == {("en", "de"): ("germanic", "germanic"), ("de", "fr"): ("germanic", "romance")}

    # a group file that lacks a language of the directions is named
    groups.write_text("en\teng\tgermanic\nfr\tfra\tromance\n")  # three columns work too
    code, _, err = evaluate(*argv(tiny_run, out, *score, "--lang-groups", str(groups)))
    assert code == 2 and f"direction 'en-de' uses a language outside --lang-groups {groups} (en, fr)" in err


def test_a_missing_file_is_one_line_naming_its_flag(tiny_run, tmp_path):
    missing = str(tmp_path / "missing")
    cases = [
        ([], missing, f"DATA {missing}: no such directory"),
        (["--gen-subset", "devtest"], None, f"--gen-subset devtest: DATA {tiny_run.data} has no devtest split for"),
        (["--raw", tiny_run.raw, "--spm-model", tiny_run.spm, "--lang-groups", missing], None,
         f"--lang-groups {missing}: no such file"),
        (["--raw", missing], None, f"--raw {missing}: no such directory"),
        (["--path", missing], None, f"--path {missing}: no such checkpoint file"),  # the last --path wins
    ]
    for extra, data, expected in cases:
        code, _, err = evaluate(*argv(tiny_run, tmp_path / "out", *extra, data=data))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("lslo-evaluate: error: "), err[-2000:]
        assert expected in lines[0], (expected, lines[0])
    assert not (tmp_path / "out").exists()

