"""``make bench`` figure: N directions decoded by one ``lslo-evaluate`` process over N ``fairseq-generate`` processes.

A synthetic 12-language data folder (the same sentences in every direction) and an LSLo checkpoint
at the bench's generation sizes are written to a temporary folder; then, round by round in
alternating order, one ``python -m fairseq_lslo.cli.evaluate`` over all N directions and N
``python -m fairseq_cli.generate`` processes (one direction each, as the recipes ran it before)
decode them with the same beam and lengths.  Clock: on CPU the CPU time of the child processes
(user + system, from ``getrusage``: the machine is shared), on CUDA wall time.  The share of a
fairseq-generate process spent outside decoding (start-up, imports, task set-up, checkpoint and
data loading) comes from its own "Translated ... in X s" line against the process's wall time.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import torch

from bench.timing import Timings

TOKEN_RE = re.compile(r"Translated [\d,]+ sentences \([\d,]+ tokens\) in ([\d.]+)s")
OURS_RE = re.compile(r"decoded \d+ sentences in ([\d.]+)s \(model load ([\d.]+)s\)")


def write_data(root: str, langs: Sequence[str], pairs: Sequence[str], sentences: int, vocab: int,
               seed: int = 0) -> str:
    """dict.{lang}.txt, lang_dict.txt and a binarized test split per direction (same sentences everywhere)."""
    from fairseq.data import Dictionary, indexed_dataset

    data = os.path.join(root, "data")
    os.makedirs(data, exist_ok=True)
    n_words = vocab - 4 - len(langs)  # fairseq's 4 specials, one token per language appended by the task
    for lang in langs:
        with open(os.path.join(data, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"w{i} {n_words - i}\n" for i in range(n_words))
    with open(os.path.join(data, "lang_dict.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{lang}\n" for lang in langs)
    d = Dictionary.load(os.path.join(data, f"dict.{langs[0]}.txt"))
    g = torch.Generator().manual_seed(seed)
    sents = [torch.randint(d.nspecial, len(d), (int(torch.randint(10, 25, (1,), generator=g)),), generator=g)
             for _ in range(sentences)]
    for pair in pairs:
        for side in pair.split("-"):
            prefix = os.path.join(data, f"test.{pair}.{side}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for s in sents:
                builder.add_item(torch.cat([s, torch.tensor([d.eos()])]).int())
            builder.finalize(prefix + ".idx")
    return data


def task_flags(data: str, pairs: Sequence[str]) -> List[str]:
    return [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(pairs), "--lang-dict",
            os.path.join(data, "lang_dict.txt"), "--encoder-langtok", "src", "--decoder-langtok"]


def write_checkpoint(path: str, data: str, pairs: Sequence[str], dims: dict, lslo_langs: str, ranks: str) -> None:
    """An LSLo model (fc1/fc2, trained-looking adapters) saved in fairseq's checkpoint layout."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    src, tgt = pairs[0].split("-")
    argv = task_flags(data, pairs) + [
        "--source-lang", src, "--target-lang", tgt,  # an inference task: no training data needed to build
        "--arch", "lslo_transformer", "--cpu", "--lslo-langs", lslo_langs, "--lslo-rank", ranks,
        "--encoder-layers", str(dims["layers"]), "--decoder-layers", str(dims["layers"]),
        "--encoder-embed-dim", str(dims["dim"]), "--decoder-embed-dim", str(dims["dim"]),
        "--encoder-ffn-embed-dim", str(dims["ffn"]), "--decoder-ffn-embed-dim", str(dims["ffn"]),
        "--encoder-attention-heads", str(dims["heads"]), "--decoder-attention-heads", str(dims["heads"]),
        "--encoder-normalize-before", "--decoder-normalize-before", "--share-all-embeddings"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    with torch.no_grad():  # B = 0 at init would make every language the same
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
    state = {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "last_optimizer_state": None,
             "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                                    "lr_scheduler_state": {"best": None}, "num_updates": 0}],
             "extra_state": {}}
    torch.save(state, path)


def run_child(cmd: List[str], env: dict) -> Tuple[float, float, str]:
    """(CPU seconds of the child, wall seconds, its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout + proc.stderr


def hypotheses(text: str) -> Dict[int, str]:
    return {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in text.splitlines() if line.startswith("D-")}


def bench_evaluate(dims: dict, langs: Sequence[str], lslo_langs: str, ranks: str, n_directions: int, sentences: int,
                   beam: int, out_len: int, device: torch.device, repeats: int) -> dict:
    """Ratio of the N per-direction processes' time over the one process's, with the loading share."""
    codes = list(langs)
    all_pairs = [f"{a}-{b}" for a in codes for b in codes if a != b]
    step = max(1, len(all_pairs) // n_directions)
    pairs = all_pairs[::step][:n_directions]  # spread over sources and targets
    root = tempfile.mkdtemp(prefix="lslo-bench-eval-")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    gpu = device.type == "cuda"
    try:
        data = write_data(root, codes, pairs, sentences, dims["vocab"])
        ckpt = os.path.join(root, "checkpoint.pt")
        write_checkpoint(ckpt, data, pairs, dims, lslo_langs, ranks)
        gen = ["--path", ckpt, "--gen-subset", "test", "--beam", str(beam), "--max-len-a", "0", "--max-len-b",
               str(out_len), "--min-len", str(out_len), "--max-tokens", "8000", "--required-batch-size-multiple", "1"]
        gen += [] if gpu else ["--cpu"]
        user_dir = ["--user-dir", os.path.join(repo, "fairseq_lslo")]
        rounds: Dict[str, List[float]] = {"one_process": [], "per_direction": []}
        walls: Dict[str, List[float]] = {"one_process": [], "per_direction": []}
        load_share: List[float] = []
        ours_load: List[Dict[str, float]] = []
        same = True
        for r in range(repeats):
            def one_process():
                out = os.path.join(root, f"eval{r}")
                cmd = [sys.executable, "-m", "fairseq_lslo.cli.evaluate", *task_flags(data, pairs), *user_dir, *gen,
                       "--out-dir", out, "--no-score"]
                cpu, wall, log = run_child(cmd, env)
                m = OURS_RE.search(log)
                if m:
                    ours_load.append({"load_s": float(m.group(2)), "decode_s": float(m.group(1))})
                hyps = {p: hypotheses(open(os.path.join(out, "gen", f"{p}.gen"), encoding="utf-8").read())
                        for p in pairs}
                return cpu if not gpu else wall, wall, hyps

            def per_direction():
                total_cpu = total_wall = decode_wall = 0.0
                hyps = {}
                for p in pairs:
                    s, t = p.split("-")
                    cmd = [sys.executable, "-m", "fairseq_cli.generate", *task_flags(data, [p]), *user_dir,
                           "-s", s, "-t", t, *gen]
                    cpu, wall, log = run_child(cmd, env)
                    total_cpu, total_wall = total_cpu + cpu, total_wall + wall
                    m = TOKEN_RE.search(log)
                    decode_wall += float(m.group(1)) if m else 0.0
                    hyps[p] = hypotheses(log)
                load_share.append(1.0 - decode_wall / total_wall)
                return total_cpu if not gpu else total_wall, total_wall, hyps

            order = [("one_process", one_process), ("per_direction", per_direction)]
            results = {}
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                t, wall, hyps = fn()
                rounds[name].append(t)
                walls[name].append(wall)
                results[name] = hyps
            same = same and results["one_process"] == results["per_direction"]
        med = {k: statistics.median(v) for k, v in rounds.items()}
        return {
            "evaluate_one_process_vs_per_direction": med["per_direction"] / med["one_process"],
            "round_ratios": {"evaluate_one_process_vs_per_direction":
                             Timings(rounds).round_ratios("per_direction", "one_process")},
            "evaluate_seconds": {"clock": "wall" if gpu else "children CPU time", **{k: v for k, v in rounds.items()},
                                 "wall": walls},
            # wall-clock share of a fairseq-generate process not spent in its own "Translated ... in X s"
            "evaluate_per_process_load_share": round(statistics.median(load_share), 4),
            "evaluate_one_process_wall_s": ours_load,
            "evaluate_same_hypotheses": same,
            "evaluate_setup": f"{len(pairs)} directions x {sentences} sentences (the same in each), "
                              f"{dims['layers']}+{dims['layers']} layers, dim {dims['dim']}, vocab {dims['vocab']}, "
                              f"LSLo fc1/fc2, beam {beam}, {out_len} output tokens; one lslo-evaluate process vs "
                              f"{len(pairs)} fairseq-generate processes, {repeats} round(s)",
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
