"""lslo_data_prep.score: per-direction scores, group averages (source group x target group), heatmap."""
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTS = {
    "en": ["the cat sits on the mat", "a dog runs in the park", "we eat bread every day", "it rains a lot here"],
    "fr": ["le chat est sur le tapis", "un chien court au parc", "nous mangeons du pain", "il pleut beaucoup ici"],
    "wo": ["muus mi ngi toog", "xaj bi dafay daw", "danuy lekk mburu", "taw bi dafa bare"],
}


def gen_file(path, hyps):
    with open(path, "w", encoding="utf-8") as f:
        f.write("S-0\tignored\n")
        for i, h in reversed(list(enumerate(hyps))):  # fairseq prints sentences out of order
            f.write(f"H-{i}\t-0.5\t▁{h}\nD-{i}\t-0.5\t{h}\nP-{i}\t-0.1 -0.2\n")


def eval_folders(tmp_path):
    """(data, raw, gen, out) folders: a 3-language inventory and the reference sentences in raw/."""
    data, raw, gen, out = (tmp_path / d for d in ("bin", "raw", "gen", "eval"))
    for d in (data, raw, gen):
        d.mkdir()
    (data / "langs.tsv").write_text("en\teng\thigh\nfr\tfra\thigh\nwo\twol\tlow\n")
    for lang, sents in SENTS.items():
        (raw / f"test.{lang}").write_text("\n".join(sents) + "\n")
    return data, raw, gen, out


def test_scores_group_table_and_heatmap(tmp_path):
    data, raw, gen, out = eval_folders(tmp_path)
    text = tmp_path / "all.txt"
    text.write_text("\n".join(s for v in SENTS.values() for s in v) + "\n")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=60,
                                   hard_vocab_limit=False, minloglevel=2, num_threads=1)
    gen_file(gen / "en-fr.gen", SENTS["fr"])  # perfect
    gen_file(gen / "fr-en.gen", SENTS["en"])  # perfect
    gen_file(gen / "en-wo.gen", ["zzz"] * 4)  # nothing right
    gen_file(gen / "wo-en.gen", SENTS["en"])  # perfect
    r = subprocess.run([sys.executable, "-m", "lslo_data_prep.score", "--data", str(data), "--raw", str(raw),
                        "--gen-dir", str(gen), "--out-dir", str(out), "--spm-model", str(tmp_path / "sp.model"),
                        "--pairs", "en-fr,fr-en,en-wo,wo-en"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rows = {tuple(x.split("\t")[:2]): x.split("\t") for x in (out / "scores.tsv").read_text().splitlines()[1:]}
    assert rows[("en", "fr")][4:] == ["100.00", "100.00", "4"]
    assert float(rows[("en", "wo")][4]) < 5 and float(rows[("en", "wo")][5]) < 20
    md = (out / "scores.md").read_text()
    spbleu = md.split("| chrF++")[0]
    assert "| **high** | 100.00 (2) | " + f"{float(rows[('en', 'wo')][4]):.2f} (1)" in spbleu
    assert "| **low** | 100.00 (1) | - |" in spbleu
    assert "| **all** | 100.00 (3) |" in spbleu
    assert (out / "heatmap.png").stat().st_size > 1000

    table = (out / "scores.tsv").read_text()
    (gen / "en-fr.gen").write_text("D-0\t-1\tonly one\n")
    base = [sys.executable, "-m", "lslo_data_prep.score", "--data", str(data), "--raw", str(raw), "--gen-dir", str(gen),
            "--out-dir", str(out), "--spm-model", str(tmp_path / "sp.model"), "--pairs"]
    r = subprocess.run(base + ["en-fr,fr-wo"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "fr-wo.gen is missing: direction fr-wo was not decoded" in r.stderr
    r = subprocess.run(base + ["en-fr"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "1 hypotheses for 4 references" in r.stderr  # a changed file is scored again
    assert (out / "scores.tsv").read_text() == table  # nothing already scored was overwritten


def test_hypotheses_with_a_gap_are_an_error_not_empty_strings(tmp_path):
    """fairseq-generate can skip sentences (a dropped last batch); scoring "" in their place
    would silently lower the score while the counts still match."""
    from lslo_data_prep.langsets import DataPrepError
    from lslo_data_prep.score import read_hypotheses

    gen = tmp_path / "en-de.gen"
    gen.write_text("".join(f"D-{i}\t-0.5\thyp {i}\n" for i in (0, 1, 3)))
    with pytest.raises(DataPrepError, match=r"no hypothesis for 1 sentence\(s\) \(ids \[2\]\)"):
        read_hypotheses(str(gen))
    gen.write_text("".join(f"D-{i}\t-0.5\thyp {i}\n" for i in (1, 0, 2)))
    assert read_hypotheses(str(gen)) == ["hyp 0", "hyp 1", "hyp 2"]


def test_a_rerun_reuses_the_scores_of_unchanged_directions(tmp_path, monkeypatch):
    from lslo_data_prep import score as score_mod

    data, raw, gen, out = eval_folders(tmp_path)
    monkeypatch.setattr(score_mod, "heatmap", lambda rows, langs, path: None)
    monkeypatch.setattr(score_mod.Scorer, "spbleu", lambda self, h, r: 11.0 * len(r))
    gen_file(gen / "en-fr.gen", SENTS["fr"])
    gen_file(gen / "fr-wo.gen", SENTS["wo"])
    first = score_mod.score(str(data), str(raw), str(gen), str(out), None, ["en-fr", "fr-wo"])
    calls = []
    monkeypatch.setattr(score_mod.Scorer, "spbleu", lambda self, h, r: calls.append(h) or 99.0)
    again = score_mod.score(str(data), str(raw), str(gen), str(out), None, ["en-fr", "fr-wo"])
    assert again == first and calls == []  # nothing scored again
    gen_file(gen / "fr-wo.gen", ["x"] * 4)  # a changed hypothesis file is scored again, alone
    rows = score_mod.score(str(data), str(raw), str(gen), str(out), None, ["en-fr", "fr-wo"])
    assert calls == [["x"] * 4] and [r["spBLEU"] for r in rows] == [44.0, 99.0]
