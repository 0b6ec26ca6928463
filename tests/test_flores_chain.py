"""`make flores12` end to end on CPU with the fixture archives; DRY_RUN output of every method."""
import json
import os
import subprocess
import sys

import pytest

import flores_fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {**flores_fixture.TINY_DIMS, "CPU": "1", "VALID_SIZE": "8", "MAX_UPDATE": "3", "MAX_TOKENS": "2000",
        "UPDATE_FREQ": "1", "WARMUP_UPDATES": "1", "LOG_INTERVAL": "1", "SAVE_INTERVAL_UPDATES": "0"}


def make(target, env, timeout=300, unset=()):
    full = {**os.environ, "OMP_NUM_THREADS": "1", "LSLO_PYTHON": sys.executable, **env}
    for name in ("MAKEFLAGS", *unset):
        full.pop(name, None)
    return subprocess.run(["make", "-s", target], cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_make_flores12_end_to_end(tmp_path):
    arch = flores_fixture.archives()
    root = tmp_path / "flores"
    env = {**TINY, "FLORES_ARCHIVE": arch["flores"], "MODEL_ARCHIVE": arch["model"], "DATA_ROOT": str(root),
           # LSLo + pruning (the default METHOD), pruned within the few updates of this run
           "PRUNE_UNIT": "updates", "PRUNE_START": "1", "PRUNE_END": "2", "PRUNE_INTERVAL": "1",
           "EVAL_PAIRS": "en-fr,wo-zh", "EXTRA_GEN_ARGS": "--max-len-b 8",
           "SCORE_SPM_MODEL": str(root / "flores101_mm100_615M" / "sentencepiece.bpe.model")}
    r = make("flores12", env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    run = root / "runs" / "lang12-615M-lslo_prune"
    ckpt = run / "checkpoints" / "checkpoint_last.pt"  # a pruning run is scored at its final sparsity
    assert ckpt.is_file()
    assert f"evaluate.sh: evaluating {ckpt} (the last checkpoint: the model at its final sparsity" in r.stderr
    assert "DEBUG:matplotlib" not in r.stdout + r.stderr  # the heatmap's font search stays quiet
    rows = (run / "eval" / "scores.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["src", "tgt", "src_group", "tgt_group", "spBLEU", "chrF++", "sentences"]
    assert [row.split("\t")[:4] for row in rows[1:]] == [["en", "fr", "high", "high"], ["wo", "zh", "low", "medium"]]
    for row in rows[1:]:
        cols = row.split("\t")
        assert 0.0 <= float(cols[4]) <= 100.0 and 0.0 <= float(cols[5]) <= 100.0 and cols[6] == "8"
    md = (run / "eval" / "scores.md").read_text()
    assert "| **high** |" in md and "| **low** |" in md and "(1)" in md
    assert f"Decoded by: checkpoint {ckpt} (sha256 " in md
    assert (run / "eval" / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(line.startswith("D-") for line in (run / "eval" / "gen" / "wo-zh.gen").read_text().splitlines()) == 8
    record = json.loads((run / "eval" / "gen" / "wo-zh.gen.json").read_text())  # which checkpoint decoded it
    assert record["model"]["files"][0]["path"] == str(ckpt) and record["settings"]["beam"] == 5

    # the checkpoint is an LSLo model over the 12 languages, and pruning removed weights
    stats = subprocess.run([sys.executable, "-m", "fairseq_lslo.cli.stats", str(ckpt), "--json"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert stats.returncode == 0, stats.stderr
    s = json.loads(stats.stdout)
    assert sorted(s["languages"]) == sorted(["en", "fr", "it", "de", "nl", "zh", "ja", "ko", "oc", "or", "sd", "wo"])
    assert s["total"]["nonzero_parameters"] < s["total"]["lslo_parameters"]

    # a restarted (e.g. requeued) training job resumes from checkpoint_last.pt, not from the pretrained model
    r = make("flores12", {**env, "STEPS": "train", "MAX_UPDATE": "4"})
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "checkpoint_last.pt (epoch 1 @ 3 updates)" in log and "loading pretrained model" not in log

    # rerunning data preparation does nothing
    r = make("flores12", {**env, "STEPS": "download,prepare"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "up to date, nothing to do" in r.stdout and r.stderr.count("nothing to do") == 2


@pytest.mark.parametrize("method,expect", [
    ("full", ["--arch transformer", "--optimizer adam", "--lr 1e-4"]),
    ("shared", ["--lslo-encoder-routing shared", "--lslo-decoder-routing shared"]),
    ("lslo", ["--lslo-encoder-routing src\\*9\\,tgt\\*3", "--lslo-decoder-routing tgt\\*12", "--lr 3e-3"]),
    ("lslo_prune", ["--optimizer lslo_pruning", "--lslo-prune-unit updates", "--lslo-prune-start 1000",
                    "--lslo-prune-end 11000", "--lslo-sparsity 0.9"]),
    ("search", ["--lslo-encoder-routing learn\\*12", "--criterion lslo_label_smoothed_cross_entropy"]),
])
def test_dry_run_prints_every_command(tmp_path, method, expect):
    root = tmp_path / "never"
    r = make("flores30", {"DRY_RUN": "1", "METHOD": method, "DATA_ROOT": str(root)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum("lslo_data_prep.download" in x for x in lines) == 2
    assert sum("lslo_data_prep.prepare" in x and "lang30.tsv" in x for x in lines) == 1
    train = [x for x in lines if "fairseq_cli.train" in x]
    assert len(train) == 1
    for flag in expect:
        assert flag in train[0], (flag, train[0][:3000])
    assert "--sampling-temperature 5" in train[0] and "--label-smoothing 0.2" in train[0]
    assert "--max-tokens 4000 --update-freq 4 --max-epoch 15" in train[0]
    # one evaluation process (one model load) decodes and scores all 30 x 29 directions
    (evaluate,) = [x for x in lines if "fairseq_lslo.cli.evaluate" in x]
    assert "--beam 5" in evaluate and "--decoder-langtok" in evaluate and "--required-batch-size-multiple 1" in evaluate
    directions = evaluate.split("--directions ")[1].split()[0].replace("\\,", ",").split(",")
    assert len(directions) == 870 and len(set(directions)) == 870
    assert "--raw " in evaluate and "--no-score" not in evaluate and "--shard" not in evaluate
    assert not any("fairseq_cli.generate" in x or "lslo_data_prep.score" in x for x in lines)
    assert not root.exists()  # nothing ran


PAPER_TRAIN = ["--lslo-preset paper", "--lr 3e-3", "--lr-scheduler inverse_sqrt", "--warmup-updates 1", "--amp",
               "--seed 2", "--encoder-layerdrop 0 --decoder-layerdrop 0", "--sampling-temperature 5",
               "--label-smoothing 0.2", "--max-epoch 15", "--optimizer lslo_pruning", "--lslo-sparsity 0.9",
               "--lslo-prune-unit epochs", "--lslo-prune-start 2", "--lslo-prune-duration 10",
               "--lslo-prune-factors B", "--lslo-prune-scope language",
               "--lslo-encoder-positions q\\,k\\,v\\,fc1\\,fc2",
               "--lslo-decoder-positions q\\,k\\,v\\,cross_q\\,cross_k\\,cross_v\\,fc1\\,fc2",
               "--lslo-encoder-routing src\\*9\\,tgt\\*3", "--lslo-decoder-routing tgt\\*12",
               "--lslo-rank high:2\\,medium:2\\,low:8"]


def dry_run_lines(env):
    r = make("flores12", {"DRY_RUN": "1", **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines(), r.stderr


def test_dry_run_paper_preset_is_the_reference_recipe(tmp_path):
    lines, _ = dry_run_lines({"PRESET": "paper", "DATA_ROOT": str(tmp_path / "never")})
    (train,) = [x for x in lines if "fairseq_cli.train" in x]
    for flag in PAPER_TRAIN:
        assert flag + " " in train, (flag, train[-1500:])
    for flag in ("--fp16", "--lslo-prune-end", "--lslo-prune-interval", "--warmup-updates 4000", "--cpu"):
        assert flag not in train, flag
    assert "runs/lang12-615M-lslo_prune-paper/checkpoints" in train  # its own run folder
    (evaluate,) = [x for x in lines if "fairseq_lslo.cli.evaluate" in x]  # all 132 directions, one model load
    assert "--beam 5 " in evaluate
    assert len(evaluate.split("--directions ")[1].split()[0].split("\\,")) == 132
    assert "lang12-615M-lslo_prune-paper/checkpoints/checkpoint_last.pt " in evaluate  # the last epoch
    assert not (tmp_path / "never").exists()


def test_dry_run_presets_and_their_overrides(tmp_path):
    root = str(tmp_path / "never")
    lines, _ = dry_run_lines({"DATA_ROOT": root})  # ours, unchanged by the paper preset
    (train,) = [x for x in lines if "fairseq_cli.train" in x]
    for flag in ("--warmup-updates 4000", "--seed 1", "--lslo-prune-factors AB", "--lslo-prune-unit updates",
                 "--lslo-prune-start 1000", "--lslo-prune-end 11000"):
        assert flag + " " in train, flag
    for flag in ("--lslo-preset", "--amp", "layerdrop"):
        assert flag not in train, flag
    assert all("checkpoints/checkpoint_best.pt" in x for x in lines if "fairseq_cli.generate" in x)
    # a variable set by the user wins over the preset; PRUNE_UNIT=epochs alone gives ours by real epochs
    lines, _ = dry_run_lines({"DATA_ROOT": root, "PRESET": "paper", "CPU": "1", "SEED": "7", "PRUNE_FACTORS": "AB",
                              "PRUNE_DURATION": "", "PRUNE_END": "9", "EVAL_CHECKPOINT": "/x/checkpoint9.pt",
                              "LSLO_PRESET": "ours"})
    (train,) = [x for x in lines if "fairseq_cli.train" in x]
    for flag in ("--seed 7", "--lslo-prune-factors AB", "--lslo-prune-end 9", "--lslo-preset ours", "--cpu"):
        assert flag + " " in train or train.endswith(flag + " "), flag
    assert "--amp" not in train and "--lslo-prune-duration" not in train
    assert all("--path /x/checkpoint9.pt" in x for x in lines if "fairseq_cli.generate" in x)
    lines, _ = dry_run_lines({"DATA_ROOT": root, "PRUNE_UNIT": "epochs", "STEPS": "train"})
    (train,) = [x for x in lines if "fairseq_cli.train" in x]
    assert "--lslo-prune-unit epochs --lslo-prune-start 2 --lslo-prune-end 12 " in train


@pytest.mark.parametrize("env,message", [
    ({"PRESET": "papr"}, "PRESET=papr: expected ours or paper"),
    ({"PRUNE_END": "12", "PRUNE_DURATION": "10"}, "PRUNE_END=12 and PRUNE_DURATION=10: set one of them"),
    ({"PRUNE_UNIT": "steps"}, "PRUNE_UNIT=steps: expected epochs, estimated-epochs or updates"),
])
def test_dry_run_rejects_inconsistent_variables(tmp_path, env, message):
    r = make("flores12", {"DRY_RUN": "1", "STEPS": "train", "DATA_ROOT": str(tmp_path / "never"), **env})
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_folders_follow_the_language_set_file(tmp_path):
    """A LANGS_TSV of one's own gets folders of its own: its name, size and a hash of its rows."""
    root = str(tmp_path / "never")
    names = []
    for sub, rows in (("a", "en\teng\thigh\nfr\tfra\tlow\n"), ("b", "en\teng\thigh\nde\tdeu\tlow\n")):
        (tmp_path / sub).mkdir()
        tsv = tmp_path / sub / "lang12.tsv"  # the shipped set's file name, other languages
        tsv.write_text(rows)
        lines, err = dry_run_lines({"DATA_ROOT": root, "LANGS_TSV": str(tsv)})
        (name,) = {x.split("prepared-")[1].split("-615M")[0] for x in lines if "prepared-" in x}
        assert name.startswith("lang12-2langs-") and f"language set {name} ({tsv})" in err
        (train,) = [x for x in lines if "fairseq_cli.train" in x]
        assert f"/runs/{name}-615M-lslo_prune/checkpoints" in train
        names.append(name)
    assert names[0] != names[1]
    lines, _ = dry_run_lines({"DATA_ROOT": root})  # the shipped lang12.tsv keeps its plain name
    assert any("prepared-lang12-615M/bin" in x for x in lines)


def test_chain_sets_one_thread_unless_told(tmp_path):
    env = {"DRY_RUN": "1", "STEPS": "train", "DATA_ROOT": str(tmp_path / "never")}
    r = make("flores12", env, unset=("OMP_NUM_THREADS",))
    assert r.returncode == 0 and "OMP_NUM_THREADS=1" in r.stderr, r.stderr
    r = make("flores12", {**env, "OMP_NUM_THREADS": "3"})
    assert r.returncode == 0 and "OMP_NUM_THREADS=3" in r.stderr, r.stderr


def test_schedule_and_warmup_follow_the_prepared_data(tmp_path):
    """Warmup (a tenth of the run) and the pruning schedule in estimated epochs, with virtual epochs."""
    from lslo_data_prep.epoch_size import updates_per_epoch
    from test_epoch_size import write_data

    data = tmp_path / "bin"
    data.mkdir()
    write_data(data)
    base = {"DATA_ROOT": str(tmp_path / "never"), "DATA_DIR": str(data), "STEPS": "train", "CPU": "1",
            "MAX_TOKENS": "600", "UPDATE_FREQ": "1"}
    per_epoch = updates_per_epoch(str(data), 600, sampling_method="temperature", temperature=5, virtual_epoch_size=500)
    assert updates_per_epoch(str(data), 600, sampling_method="temperature", temperature=5) > 4 * per_epoch
    for extra in ({"VIRTUAL_EPOCH_SIZE": "500"}, {"EXTRA_TRAIN_ARGS": "--virtual-epoch-size 500"}):
        lines, err = dry_run_lines({**base, **extra})
        (train,) = [x for x in lines if "fairseq_cli.train" in x]
        assert f"about {per_epoch} updates per epoch" in err
        warmup = min(4000, 15 * per_epoch // 10)
        assert f"--warmup-updates {warmup} " in train and f"train.sh: warmup {warmup} updates" in err
        assert f"--lslo-prune-start {per_epoch} --lslo-prune-end {11 * per_epoch} " in train
        assert train.count("--virtual-epoch-size 500") == 1
    lines, err = dry_run_lines({**base, "MAX_UPDATE": "700"})  # a fixed run length sizes the warmup
    (train,) = [x for x in lines if "fairseq_cli.train" in x]
    assert "--warmup-updates 70 " in train
