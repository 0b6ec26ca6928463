"""CPU decoding speed of a merged direction: CTranslate2 (float32, int8) against fairseq-generate.

One run: an LSLo model (random weights; speed does not depend on them) is merged for en->de
with ``lslo-merge``'s code, converted with CTranslate2's own converter, and the same source
sentences are decoded by ``fairseq-generate`` (its own "Translated ... in Xs" figure: decoding
time, model loading excluded) and by ``ctranslate2.Translator.translate_batch`` (model loaded
before the clock starts), interleaved round by round, one thread each, same beam, batch size
and output length (``--min-len``/``min_decoding_length`` hold every hypothesis at ``--out-len``
tokens; the JSON records the output token counts of both).  The clock is wall time (fairseq's
own figure is), so the JSON records the machine's load average and the ratio of every round.
Writes ``results/bench/deploy_speed.json``.

usage: python bench/deploy_speed.py [--sentences 200] [--beam 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)
PAIRS = ["en-de", "de-en"]
TASK = ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
        "--encoder-langtok", "src", "--decoder-langtok"]
LSLO = ["--lslo-langs", "en:high,de:low", "--lslo-rank", "high:2,low:8"]


def routing(layers: int) -> List[str]:
    """The paper's layout: the last third of the encoder target-routed, the rest source-routed."""
    tgt = layers // 3
    encoder = f"src*{layers - tgt},tgt*{tgt}" if tgt else f"src*{layers}"
    return ["--lslo-encoder-routing", encoder, "--lslo-decoder-routing", f"tgt*{layers}"]


def env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def write_data(root: str, sentences: int, vocab: int, seed: int = 1) -> str:
    """A word dictionary and ``sentences`` random source sentences (12-28 words), binarized for en->de."""
    rng = random.Random(seed)
    raw, data = os.path.join(root, "raw"), os.path.join(root, "bin")
    os.makedirs(raw)
    os.makedirs(data)
    with open(os.path.join(root, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {vocab - i}\n" for i in range(vocab))
    for lang in ("en", "de"):
        with open(os.path.join(raw, f"test.{lang}"), "w") as f:
            f.writelines(" ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(12, 28))) + "\n"
                         for _ in range(sentences))
        tmp = os.path.join(root, f"tmp-{lang}")
        subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--source-lang", lang, "--srcdict",
                        os.path.join(root, "dict.txt"), "--destdir", tmp, "--testpref", os.path.join(raw, "test"),
                        "--workers", "1"], check=True, capture_output=True, env=env())
        for ext in ("bin", "idx"):
            for pair in PAIRS:
                for split in ("test", "train", "valid"):  # building the LSLo model checks train/valid exist
                    os.link(os.path.join(tmp, f"test.{lang}-None.{lang}.{ext}"),
                            os.path.join(data, f"{split}.{pair}.{lang}.{ext}"))
        os.replace(os.path.join(tmp, f"dict.{lang}.txt"), os.path.join(data, f"dict.{lang}.txt"))
    return data


def merged_checkpoint(data: str, out: str, dims: List[str]) -> None:
    """Build an LSLo model with fairseq's own parsers, randomise its adapters, merge en->de, save."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    import fairseq_lslo  # noqa: F401  (registers the plugin)
    from fairseq_lslo.checkpoint_io import atomic_torch_save
    from fairseq_lslo.deploy.merge import plain_checkpoint

    argv = [data, *TASK, "--arch", "lslo_transformer", "--cpu", *dims, "--share-all-embeddings", *LSLO,
            *routing(int(dims[dims.index("--encoder-layers") + 1]))]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    torch.manual_seed(1)
    model = tasks.setup_task(args).build_model(args)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True)
    atomic_torch_save(plain_checkpoint({"args": None, "cfg": cfg, "model": model.state_dict()}, "en", "de"), out)


def fairseq_generate(data: str, model: str, beam: int, batch: int, out_len: int) -> dict:
    """One fairseq-generate run: its own decoding time and the hypotheses."""
    cmd = [os.path.join(BIN, "fairseq-generate"), data, *TASK, "-s", "en", "-t", "de", "--path", model, "--cpu",
           "--beam", str(beam), "--batch-size", str(batch), "--gen-subset", "test", "--max-len-a", "0",
           "--max-len-b", str(out_len), "--min-len", str(out_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed:\n{proc.stderr[-3000:]}")
    m = re.search(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s", proc.stdout + proc.stderr)
    if not m:
        raise RuntimeError("fairseq-generate printed no 'Translated ... in Xs' line")
    sources = {int(ln.split("\t")[0][2:]): ln.split("\t")[1].split() for ln in proc.stdout.splitlines()
               if ln.startswith("S-")}
    return {"seconds": float(m.group(3)), "sentences": int(m.group(1).replace(",", "")),
            "tokens": int(m.group(2).replace(",", "")), "sources": [sources[i] for i in sorted(sources)]}


def ct2_translate(translator, sources: List[List[str]], beam: int, batch: int, out_len: int) -> dict:
    t0 = time.perf_counter()
    results = translator.translate_batch(sources, target_prefix=[["__de__"]] * len(sources), beam_size=beam,
                                         max_batch_size=batch, length_penalty=1.0, max_decoding_length=out_len + 1,
                                         min_decoding_length=out_len + 1)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": sum(len(r.hypotheses[0]) for r in results)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out-len", type=int, default=24, help="output tokens per sentence (fixed, see above)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dims", default="6,512,2048,8", help="layers,d_model,ffn,heads (default: transformer base)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "deploy_speed.json"))
    args = p.parse_args(argv)
    import ctranslate2
    from ctranslate2.converters import FairseqConverter

    layers, d_model, ffn, heads = args.dims.split(",")
    dims = ["--encoder-layers", layers, "--decoder-layers", layers, "--encoder-embed-dim", d_model,
            "--decoder-embed-dim", d_model, "--encoder-ffn-embed-dim", ffn, "--decoder-ffn-embed-dim", ffn,
            "--encoder-attention-heads", heads, "--decoder-attention-heads", heads]
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lslo-deploy-bench-") as root:
        data = write_data(root, args.sentences, args.vocab)
        model = os.path.join(root, "en-de.pt")
        merged_checkpoint(data, model, dims)
        ct2_dir = os.path.join(root, "ct2")
        FairseqConverter(model, data).convert(ct2_dir)
        translators = {ct: ctranslate2.Translator(ct2_dir, device="cpu", compute_type=ct, inter_threads=1,
                                                  intra_threads=1) for ct in ("float32", "int8")}
        runs: Dict[str, List[float]] = {"fairseq_generate": [], "ct2_float32": [], "ct2_int8": []}
        tokens = {}
        for _ in range(args.rounds):
            fs = fairseq_generate(data, model, args.beam, args.batch, args.out_len)
            runs["fairseq_generate"].append(fs["seconds"])
            tokens["fairseq_generate"] = fs["tokens"]
            for ct, translator in translators.items():
                r = ct2_translate(translator, fs["sources"], args.beam, args.batch, args.out_len)
                runs[f"ct2_{ct}"].append(r["seconds"])
                tokens[f"ct2_{ct}"] = r["tokens"]
    median = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "what": "decoding time of one merged direction (en->de), same sentences, one thread, model load excluded",
        "command": "python bench/deploy_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"torch": torch.__version__, "ctranslate2": ctranslate2.__version__},
        "setup": {"sentences": args.sentences, "beam": args.beam, "batch": args.batch, "out_len": args.out_len,
                  "dims": args.dims, "vocab": args.vocab, "rounds": args.rounds},
        "seconds": runs, "median_seconds": median, "output_tokens": tokens,
        "speedup_vs_fairseq_generate": {k: median["fairseq_generate"] / median[k] for k in ("ct2_float32", "ct2_int8")},
        "speedup_by_round": {k: [f / c for f, c in zip(runs["fairseq_generate"], runs[k])]
                             for k in ("ct2_float32", "ct2_int8")},
        "elapsed_s": round(time.time() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("median_seconds", "speedup_vs_fairseq_generate", "machine")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
