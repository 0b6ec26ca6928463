"""The tiny demo end to end (`make demo DEMO=tiny`), and the benchmark generator's properties."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fairseq_lslo.demo.benchmark import GRAMMARS, SIZES, generate
from fairseq_lslo.demo.commands import METHODS, train_command
from fairseq_lslo.demo.config import CONFIGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: every fine-tuning method must beat the base model by at least this much BLEU (all directions)
MIN_GAIN_BLEU = 3.0


def test_benchmark_is_deterministic_and_shaped():
    a, b = generate(SIZES["tiny"]), generate(SIZES["tiny"])
    assert a.portions == b.portions
    assert len(GRAMMARS) >= 8 and {g.group for g in GRAMMARS} == {"high", "medium", "low"}
    sizes = {g.code: len(a.portions["pretrain"]["train"][g.code]) for g in GRAMMARS}
    by_group = {g.group: sizes[g.code] for g in GRAMMARS}
    assert by_group["high"] >= 3 * by_group["medium"] >= 3 * by_group["low"] > 0
    for split in ("valid", "test"):  # multi-way parallel: same meanings, same count everywhere
        assert len({len(v) for v in a.portions["finetune"][split].values()}) == 1
    # languages really differ: no two render the same test sentence alike
    first = [a.portions["finetune"]["test"][g.code][0] for g in GRAMMARS]
    assert len(set(first)) == len(first)
    # the fine-tuning portion is shifted: new constructions bring words pretraining never has
    for g in GRAMMARS:
        pre = {w for s in a.portions["pretrain"]["train"][g.code] for w in s.split()}
        ft = {w for s in a.portions["finetune"]["train"][g.code] for w in s.split()}
        assert ft - pre, g.code  # at least the new negation and possessive morphemes


def test_shared_lora_and_lslo_commands_differ_only_in_routing(tmp_path):
    cfg = CONFIGS["tiny"]
    lslo = train_command(cfg, "DATA", "OUT", METHODS["lslo"], "BASE.pt")
    shared = train_command(cfg, "DATA", "OUT", METHODS["shared_lora"], "BASE.pt")
    diff = [(x, y) for x, y in zip(lslo, shared) if x != y]
    assert len(lslo) == len(shared) and len(diff) == 2
    assert all(y.startswith("shared*") for _, y in diff)
    pruned = train_command(cfg, "DATA", "OUT", METHODS["lslo_pruned"], "BASE.pt")
    assert pruned[pruned.index("--optimizer") + 1] == "lslo_pruning"


def test_the_parameterisation_study_differs_only_in_the_preset():
    cfg = CONFIGS["tiny"]
    for ours, ref in (("lslo", "lslo_paper"), ("lslo_pruned", "lslo_paper_pruned")):
        a = train_command(cfg, "DATA", "OUT", METHODS[ours], "BASE.pt")
        b = train_command(cfg, "DATA", "OUT", METHODS[ref], "BASE.pt")
        assert [(x, y) for x, y in zip(a, b) if x != y] == [("ours", "paper")] and len(a) == len(b)
    seeded = train_command(cfg, "DATA", "OUT", METHODS["lslo"], "BASE.pt", seed=7)
    assert seeded[seeded.index("--seed") + 1] == "7"


def test_sizes_run_what_they_say():
    """make demo: the methods comparison only; DEMO=study and DEMO=pruning reuse its data and base model."""
    from dataclasses import asdict

    from fairseq_lslo.demo.config import base_key

    assert CONFIGS["default"].methods == ("base", "full", "shared_lora", "lslo", "lslo_pruned")
    assert all(METHODS[m].preset == "ours" for m in CONFIGS["default"].methods)
    assert {METHODS[m].preset for m in CONFIGS["study"].methods} == {"ours", "paper"}
    for name in ("study", "pruning"):
        cfg = CONFIGS[name]
        assert cfg.shares_base_of == "default" and base_key(cfg) == base_key(CONFIGS["default"])
        assert len(cfg.study_seeds) == 2 and asdict(cfg.finetune) == asdict(CONFIGS["default"].finetune)
    assert set(CONFIGS["tiny"].methods) == set(CONFIGS["default"].methods) | set(CONFIGS["study"].methods)


def test_demo_help_names_the_sizes_and_methods():
    done = subprocess.run([sys.executable, "-m", "fairseq_lslo.demo", "--help"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0
    assert "4 ways" not in done.stdout
    for word in ("default", "study", "pruning", "tiny", "shared LoRA", "LSLo + gradual pruning"):
        assert word in " ".join(done.stdout.split()), word


def test_pruning_study_grid_matches_parameter_counts():
    """Pruning 2/2/8 to 0.5 lands on the count of 1/1/4; shared LoRA rank 17 on it too; only the
    intended flags differ between the variants."""
    from fairseq_lslo.demo.pruning_study import pareto_front, study_methods

    cfg = CONFIGS["pruning"]
    grid = {m.name: m for m in study_methods(cfg, with_structure=True)}
    assert {"rank_half", "rank_today", "rank_double", "prune50", "prune75", "prune90", "prune75_long",
            "prune75_b", "prune75_layer", "prune50_rank", "prune75_rank", "shared17", "shared8",
            "shared3"} == set(grid)

    def units(ranks):  # rank units per layer and position: sum over the languages of their group's rank
        r = dict(x.split(":") for x in ranks.split(","))
        return sum(int(r[group]) for _code, group in cfg.languages)

    assert units(grid["rank_double"].ranks) * 0.5 == units(grid["rank_today"].ranks) == 17
    cmd = {n: train_command(cfg, "DATA", "OUT", m, "BASE.pt") for n, m in grid.items()}
    diff = lambda a, b: [(x, y) for x, y in zip(cmd[a], cmd[b]) if x != y]  # noqa: E731
    assert diff("prune75", "prune75_b") == [("AB", "B")]
    assert diff("prune75", "prune75_layer") == [("language", "layer")]
    assert diff("prune75", "prune90") == [("0.75", "0.9")]
    i = cmd["prune50_rank"].index("--lslo-prune-structure")
    assert cmd["prune50_rank"][i + 1] == "rank" and cmd["prune50_rank"][:i] + cmd["prune50_rank"][i + 2:] == cmd["prune50"]
    long, today = grid["prune75_long"].pruning, grid["prune75"].pruning
    assert long.end < today.end and cfg.finetune.updates - long.end > cfg.finetune.updates - today.end
    assert "--lslo-shared-rank" not in cmd["shared17"]
    assert cmd["shared8"][cmd["shared8"].index("--lslo-shared-rank") + 1] == "8"
    # the Pareto front: nothing with fewer parameters and more BLEU
    assert sorted(pareto_front({"a": (10, 30.0), "b": (20, 29.0), "c": (20, 35.0), "d": (5, 20.0)})) == ["a", "c", "d"]


def test_pruning_study_runs_the_core_comparison_first():
    from fairseq_lslo.demo.commands import runs_of
    from fairseq_lslo.demo.pruning_study import run_order, study_methods

    cfg = CONFIGS["pruning"]
    runs = runs_of([METHODS["base"], *study_methods(cfg, True)], 1, (1, 2))
    runs.sort(key=lambda r: run_order(r.name, r.method.name, (1, 2).index(r.seed) if r.method.study else 0))
    names = [r.name for r in runs]
    assert names[:3] == ["base", "rank_today", "shared17"]
    assert names.index("prune50-seed2") < names.index("prune90") < names.index("prune90-seed2")
    assert len(names) == len(set(names)) == 1 + 2 * 14


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "fairseq_lslo.demo", "--demo", "tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
def test_tiny_demo_outputs(tiny_demo):
    out, stdout = tiny_demo
    assert "==> [6/6]" in stdout and "elapsed" in stdout
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    assert summary["format"] == "lslo-demo/1" and summary["directions"] == 56
    for m in summary["methods"].values():
        assert m["label"] in md
        assert set(m["bleu"]["groups"]) == {"high", "medium", "low"}
        assert len(m["bleu"]["directions"]) == 56
    assert (out / "bleu_per_language.png").stat().st_size > 1000


@pytest.mark.slow
def test_tiny_demo_binaries_follow_the_resource_groups(tiny_demo):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    out, _ = tiny_demo
    pre = out / "work" / "bin" / "pretrain"
    sizes = SIZES["tiny"].pretrain
    for pair, n in (("ha-hb", sizes["high"]), ("ha-ma", sizes["medium"]), ("la-hc", sizes["low"])):
        for lang in pair.split("-"):
            assert len(MMapIndexedDataset(str(pre / f"train.{pair}.{lang}"))) == n, (pair, lang)
    ft = out / "work" / "bin" / "finetune"
    assert len(MMapIndexedDataset(str(ft / "test.la-ha.ha"))) == SIZES["tiny"].test


@pytest.mark.slow
def test_tiny_demo_every_method_beats_the_base(tiny_demo):
    """Our unpruned methods by MIN_GAIN_BLEU; the reference parameterisation's runs (the study compares
    them with ours, it does not tune them) must at least improve on the base.

    Pruned runs: the demo prunes high and medium languages to 0.9 and low ones to 0.5. At 0.9 the
    tiny run's rank-1 adapters keep little of their gain (17.72 against the base's 15.03 overall on
    2026-12-06, with the fixed pruning score; high 24.58 against 24.3), as the pruning study measures
    at the default size (0.9: 31.9 BLEU against 44.2 unpruned, docs/pruning-study.md). So a pruned run
    must beat the base overall, and by MIN_GAIN_BLEU in the group pruned to 0.5 (low), where the
    evidence says its subspace keeps most of the gain.
    """
    out, _ = tiny_demo
    methods = json.loads((out / "summary.json").read_text())["methods"]
    base = methods["base"]["bleu"]
    for name, m in methods.items():
        if name == "base":
            continue
        method = METHODS[name]
        margin = 0.0 if method.preset == "paper" or method.prune else MIN_GAIN_BLEU
        assert m["bleu"]["overall"] > base["overall"] + margin, (name, m["bleu"]["overall"], base["overall"])
        if method.prune and method.preset != "paper":
            low = (m["bleu"]["groups"]["low"], base["groups"]["low"])
            assert low[0] > low[1] + MIN_GAIN_BLEU, (name, "low", *low)


@pytest.mark.slow
def test_tiny_demo_parameter_counts(tiny_demo):
    out, _ = tiny_demo
    summary = json.loads((out / "summary.json").read_text())
    p = {name: m["parameters"] for name, m in summary["methods"].items()}
    assert p["full"]["trainable_percent"] == 100.0 and p["base"]["trainable"] == 0
    assert p["shared_lora"]["trainable"] == p["lslo"]["trainable"] > 0
    assert p["lslo"]["trainable"] < p["lslo"]["model_parameters"]
    for name in ("shared_lora", "lslo", "lslo_pruned"):
        if name in p and "stats_tool" in p[name]:  # two independent counts agree
            assert p[name]["stats_tool"]["lslo_parameters"] == p[name]["trainable"]
            assert p[name]["stats_tool"]["nonzero_parameters"] == p[name]["nonzero"]
    if "lslo_pruned" not in p:
        pytest.fail("LSLo + gradual pruning did not run: " + "; ".join(summary["notes"]))
    assert p["lslo_pruned"]["nonzero"] < p["lslo"]["nonzero"]
    # reference parameterisation: square d_model -> d_model adapters in fc1/fc2 (ours: d_model -> d_ffn and back)
    dims = CONFIGS["tiny"].model
    assert p["lslo_paper"]["trainable"] * (dims.dim + dims.ffn) == p["lslo"]["trainable"] * 2 * dims.dim
    assert p["lslo_paper_pruned"]["nonzero"] < p["lslo_paper"]["nonzero"]
    curve = summary["sparsity_curve"]
    assert curve[-1]["groups"]["high"] > curve[-1]["groups"]["low"] > 0
    assert (out / "sparsity.png").stat().st_size > 1000


@pytest.mark.slow
def test_tiny_demo_reports_the_parameterisation_study(tiny_demo):
    out, _ = tiny_demo
    summary = json.loads((out / "summary.json").read_text())
    study = summary["study"]
    seeds = list(CONFIGS["tiny"].study_seeds)
    assert study["seeds"] == seeds
    assert set(study["methods"]) == {"lslo", "lslo_pruned", "lslo_paper", "lslo_paper_pruned"}
    for name, m in study["methods"].items():
        assert [r["seed"] for r in m["runs"]] == seeds
        assert m["runs"][0]["bleu"]["overall"] == summary["methods"][name]["bleu"]["overall"]
        assert m["min"]["overall"] <= m["mean"]["overall"] <= m["max"]["overall"]
    md = (out / "summary.md").read_text()
    assert "Parameterisation study" in md and "LSLo, reference parameterisation minus LSLo" in md


def test_study_summary_takes_mean_and_range_over_seeds():
    from fairseq_lslo.demo import report
    from fairseq_lslo.demo.commands import runs_of

    runs = runs_of([METHODS["full"], METHODS["lslo"], METHODS["lslo_paper"]], 1, [1, 2])
    assert [r.name for r in runs] == ["full", "lslo", "lslo-seed2", "lslo_paper", "lslo_paper-seed2"]
    scores = {"lslo": 10.0, "lslo-seed2": 14.0, "lslo_paper": 11.0, "lslo_paper-seed2": 12.0}
    bleu = {k: {"overall": v, "groups": {"high": v + 1, "low": v - 1}} for k, v in scores.items()}
    counts = {k: {"trainable_percent": 5.0, "nonzero_percent": 5.0} for k in scores}
    study = report.study_summary([r for r in runs if r.method.study], bleu, counts, {})
    lslo = study["methods"]["lslo"]
    assert (lslo["mean"]["overall"], lslo["min"]["overall"], lslo["max"]["overall"]) == (12.0, 10.0, 14.0)
    assert lslo["mean"]["groups"] == {"high": 13.0, "low": 11.0}
    md = "\n".join(report.study_markdown(study, ["high", "low"]))
    assert "| LSLo | ours | 13.0 (11.0-15.0) | 11.0 (9.0-13.0) | 12.0 (10.0-14.0) |" in md
    assert "all -0.5 (seed ranges overlap)" in md


def demo_exit(capsys, *argv):
    """python -m fairseq_lslo.demo's main in this process (a subprocess would import fairseq: seconds)."""
    from fairseq_lslo.demo.run import main

    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code, capsys.readouterr().err


def test_demo_rejects_bad_jobs(capsys):
    code, err = demo_exit(capsys, "--jobs", "0")
    assert code != 0 and "--jobs" in err


def test_demo_rejects_bad_seeds(capsys):
    code, err = demo_exit(capsys, "--seeds", "1,x")
    assert code != 0 and "--seeds" in err
