"""``make bench``: speed and memory of LSLo, each figure a ratio measured side by side in one process.

    python -m bench.speed                 # CPU -> results/bench/bench.json
    python -m bench.speed --device cuda   # GPU -> results/bench/bench-gpu.json

Every timed figure is median(ours) / median(reference) over interleaved repeats after
warm-up; the JSON also gives the quartiles of the same ratio taken round by round (the two
functions ran next to each other in every round), so the run's own spread is on record.
On CPU the clock is the process CPU time (``time.process_time``): the machine
is shared with other jobs, and CPU time does not count the time other processes hold the
cores; on CUDA it is wall time between synchronisations.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from argparse import Namespace
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from bench.evaluate_speed import bench_evaluate
from bench.timing import Clock, compare

LANGS = [("en", "high"), ("fr", "high"), ("it", "high"), ("de", "high"), ("nl", "medium"), ("zh", "medium"),
         ("ja", "medium"), ("ko", "medium"), ("oc", "low"), ("or", "low"), ("sd", "low"), ("wo", "low")]
RANKS = {"high": 2, "medium": 2, "low": 8}
TARGETS = {  # figure -> (comparison, target)
    "module_vs_frozen": ("<=", 1.10),
    "module_vs_loop": (">=", 2.0),
    "train_tokens_per_s_vs_full_ft": (">=", 1.4),
    "optimizer_state_vs_full_ft": ("<=", 0.05),
    "generate_unmerged_vs_base": ("<=", 1.15),
    "generate_merged_vs_base": ("<=", 1.03),
    "evaluate_one_process_vs_per_direction": (">=", 3.0),
}


# --- models --------------------------------------------------------------------------------
def lang_codes() -> str:
    return ",".join(f"{c}:{g}" for c, g in LANGS)


def rank_spec() -> str:
    return ",".join(f"{g}:{r}" for g, r in RANKS.items())


class BenchTask:
    """The little a fairseq model and criterion need from a multilingual translation task."""

    def __init__(self, vocab: int, target_lang: str = "de"):
        from fairseq.data import Dictionary

        d = Dictionary()
        for i in range(vocab - len(d) - len(LANGS)):
            d.add_symbol(f"w{i}")
        for code, _ in LANGS:
            d.add_symbol(f"__{code}__")
        self.source_dictionary = self.target_dictionary = d
        pairs = [f"{a}-{b}" for a, _ in LANGS for b, _ in LANGS if a != b]
        self.args = Namespace(lang_pairs=pairs, encoder_langtok="src", decoder_langtok=True,
                              lang_tok_style="multilingual", source_lang=None, target_lang=target_lang)
        self.lang_pairs = pairs

    def lang_token(self, code: str) -> int:
        return self.source_dictionary.index(f"__{code}__")


def model_args(dims: dict, lslo: bool, positions: str = "fc1,fc2") -> Namespace:
    args = Namespace(
        arch="lslo_transformer" if lslo else "transformer",
        encoder_layers=dims["layers"], decoder_layers=dims["layers"],
        encoder_embed_dim=dims["dim"], decoder_embed_dim=dims["dim"],
        encoder_ffn_embed_dim=dims["ffn"], decoder_ffn_embed_dim=dims["ffn"],
        encoder_attention_heads=dims["heads"], decoder_attention_heads=dims["heads"],
        encoder_normalize_before=True, decoder_normalize_before=True,
        share_all_embeddings=True, share_decoder_input_output_embed=True,
        dropout=0.1, attention_dropout=0.1, max_source_positions=1024, max_target_positions=1024,
    )
    if lslo:
        args.lslo_langs, args.lslo_rank = lang_codes(), rank_spec()
        args.lslo_encoder_positions = args.lslo_decoder_positions = positions
    return args


def build_models(dims: dict, task: BenchTask, device: torch.device, seed: int = 1):
    """(plain transformer with full fine-tuning, LSLo model on the same base weights)."""
    from fairseq.models.transformer import TransformerModel, base_architecture

    from fairseq_lslo.models.architectures import lslo_base_architecture
    from fairseq_lslo.models.lslo_transformer import LSLoTransformerModel

    torch.manual_seed(seed)
    plain_args = model_args(dims, lslo=False)
    base_architecture(plain_args)
    full = TransformerModel.build_model(plain_args, task)
    lslo_args = model_args(dims, lslo=True)
    lslo_base_architecture(lslo_args)
    lslo = LSLoTransformerModel.build_model(lslo_args, task)
    lslo.load_state_dict(full.state_dict())
    with torch.no_grad():  # trained-looking adapters (B = 0 at init would make them free to skip)
        for name, p in lslo.named_parameters():
            if p.requires_grad and name.endswith(tuple(f"B{r}" for r in set(RANKS.values()))):
                p.normal_(std=0.02)
    return full.to(device), lslo.to(device)


def make_sample(task: BenchTask, batch: int, length: int, device: torch.device, seed: int = 0) -> dict:
    """A batch mixing all languages as source and target, tokens as the multilingual task lays them out."""
    g = torch.Generator().manual_seed(seed)
    d = task.source_dictionary
    low, high = d.nspecial, len(d) - len(LANGS)
    src = torch.randint(low, high, (batch, length), generator=g)
    tgt = torch.randint(low, high, (batch, length), generator=g)
    codes = [c for c, _ in LANGS]
    for b in range(batch):
        s = codes[b % len(codes)]
        t = codes[(b * 5 + 1) % len(codes)]
        if t == s:
            t = codes[(codes.index(s) + 1) % len(codes)]
        src[b, 0] = task.lang_token(s)
        tgt[b, 0] = task.lang_token(t)
    src[:, -1] = d.eos()
    tgt[:, -1] = d.eos()
    prev = torch.cat([torch.full((batch, 1), d.eos()), tgt[:, :-1]], dim=1)
    sample = {
        "id": torch.arange(batch),
        "nsentences": batch,
        "ntokens": batch * length,
        "net_input": {"src_tokens": src, "src_lengths": torch.full((batch,), length), "prev_output_tokens": prev},
        "target": tgt,
    }
    return move(sample, device)


def move(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    return obj


# --- (1), (2): one LSLo layer --------------------------------------------------------------
def bench_module(device: torch.device, clock: Clock, repeats: int, warmup: int) -> dict:
    """fc1 of M2M-615M (1024 -> 4096), 64 sentences x 32 tokens over 12 languages."""
    from fairseq_lslo.modules.lslo_linear import LowRankBank, LSLoLinear
    from fairseq_lslo.modules.routing import BatchLanguages, LanguageRouter

    T, N, d_in, d_out = 32, 64, 1024, 4096
    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out).to(device).requires_grad_(False)
    ranks = [RANKS[g] for _, g in LANGS]
    bank = LowRankBank(d_in, d_out, ranks, alpha=1.0).to(device)
    with torch.no_grad():
        for _, _, p, _ in bank.factor_tensors():
            p.normal_(std=0.02)
    router = LanguageRouter()
    layer = LSLoLinear(base, "src", {"src": bank}, router)
    slots = (torch.arange(N) % len(LANGS))[torch.randperm(N)].to(device)
    router.set(BatchLanguages(slots, None, None, None))
    x = torch.randn(T, N, d_in, device=device, requires_grad=True)
    grad = torch.randn(T, N, d_out, device=device)

    def frozen():
        x.grad = None
        base(x).backward(grad)

    def ours():
        x.grad = None
        bank.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    def loop():
        """The naive reference: per language, a boolean mask selects its samples."""
        x.grad = None
        bank.zero_grad(set_to_none=True)
        out = base(x)
        for k in range(len(ranks)):
            mask = slots == k
            if not mask.any():
                continue
            A, B = bank.factors(k)
            out[:, mask] = out[:, mask] + F.linear(F.linear(x[:, mask], A), B) * (bank.alpha / ranks[k])
        out.backward(grad)

    # two interleaved pairs: the loop's many allocations would otherwise also slow its neighbours
    t = compare(clock, {"frozen": frozen, "ours": ours}, repeats, warmup)
    t_loop = compare(clock, {"ours": ours, "loop": loop}, max(3, repeats // 2), warmup)
    return {
        "module_vs_frozen": t["ours"] / t["frozen"],
        "module_vs_loop": t_loop["loop"] / t_loop["ours"],
        "module_seconds": {"frozen": t["frozen"], "ours": t["ours"], "ours_beside_loop": t_loop["ours"],
                           "loop": t_loop["loop"]},
        "module_setup": f"LSLoLinear {d_in}->{d_out}, {N} sentences x {T} tokens, 12 languages ranks 2/2/8",
        "round_ratios": {"module_vs_frozen": t.round_ratios("ours", "frozen"),
                         "module_vs_loop": t_loop.round_ratios("loop", "ours")},
    }


# --- (3), (4): training steps and optimizer state ---------------------------------------------
def adam_for(model: torch.nn.Module, lr: float = 1e-4):
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

    cfg = FairseqAdamConfig(adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.0, lr=[lr])
    return FairseqAdam(cfg, [p for p in model.parameters() if p.requires_grad])


def state_bytes(optimizer) -> int:
    total = 0
    for state in optimizer.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def bench_training(dims: dict, batch: int, length: int, device: torch.device, clock: Clock, repeats: int,
                   warmup: int) -> dict:
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    task = BenchTask(dims["vocab"])
    full, lslo = build_models(dims, task, device)
    full.train()
    lslo.train()
    sample = make_sample(task, batch, length, device)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    opts = {"full": adam_for(full), "lslo": adam_for(lslo)}
    models = {"full": full, "lslo": lslo}

    def step(name):
        def run():
            opt = opts[name]
            opt.zero_grad()
            loss, _, _ = crit(models[name], sample)
            opt.backward(loss)
            opt.step()
        return run

    t = compare(clock, {"full": step("full"), "lslo": step("lslo")}, repeats, warmup)
    tokens = batch * length * 2  # source + target tokens per step
    result = {
        "train_tokens_per_s_vs_full_ft": t["full"] / t["lslo"],
        "train_tokens_per_s": {k: tokens / v for k, v in t.items()},
        "round_ratios": {"train_tokens_per_s_vs_full_ft": t.round_ratios("full", "lslo")},
        "train_setup": f"{dims['layers']}+{dims['layers']} layers, dim {dims['dim']}, ffn {dims['ffn']}, "
                       f"vocab {dims['vocab']}, batch {batch} x {length} tokens, LSLo on fc1/fc2",
        "optimizer_state_bytes_train_dims": {k: state_bytes(o) for k, o in opts.items()},
        "trainable_parameters_train_dims": {
            k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()
        },
    }
    opts.clear()
    models.clear()
    del full, lslo
    gc.collect()
    return result


def optimizer_state_615m(bytes_per_param: Dict[str, float]) -> dict:
    """Trainable parameters of M2M-615M (vocab 256,206, the dictionary of flores101_mm100_615M) full vs LSLo fc1/fc2, counted on the meta device."""
    dims = dict(layers=12, dim=1024, ffn=4096, heads=16, vocab=256206)
    task = BenchTask(dims["vocab"])
    with torch.device("meta"):
        full, lslo = build_models(dims, task, torch.device("meta"))
    counts = {
        "full": sum(p.numel() for p in full.parameters() if p.requires_grad),
        "lslo": sum(p.numel() for p in lslo.parameters() if p.requires_grad),
    }
    state = {k: counts[k] * bytes_per_param[k] for k in counts}
    return {
        "optimizer_state_vs_full_ft": state["lslo"] / state["full"],
        "optimizer_state_bytes_615m": state,
        "trainable_parameters_615m": counts,
        "total_parameters_615m": sum(p.numel() for p in lslo.parameters()),
    }


# --- (5): beam search ----------------------------------------------------------------------
def bench_generation(dims: dict, batch: int, src_len: int, out_len: int, beam: int, device: torch.device,
                     clock: Clock, repeats: int, warmup: int) -> dict:
    from fairseq.models.transformer import TransformerModel, base_architecture
    from fairseq.sequence_generator import SequenceGenerator

    from fairseq_lslo.deploy.merge import merge_model_state

    task = BenchTask(dims["vocab"], target_lang="de")
    base, lslo = build_models(dims, task, device)
    plain_args = model_args(dims, lslo=False)
    base_architecture(plain_args)
    merged = TransformerModel.build_model(plain_args, task)
    merged.load_state_dict(merge_model_state({k: v.cpu() for k, v in lslo.state_dict().items()}, "en", "de"))
    merged = merged.to(device)
    sample = make_sample(task, batch, src_len, device, seed=1)
    src = sample["net_input"]["src_tokens"]
    src[:, 0] = task.lang_token("en")  # one direction, en -> de, as lslo-merge serves
    net_input = {"src_tokens": src, "src_lengths": sample["net_input"]["src_lengths"]}
    gens = {}
    for name, model in (("base", base), ("unmerged", lslo), ("merged", merged)):
        model.eval()
        # fixed output length: every model does exactly the same number of decoding steps
        gens[name] = (model, SequenceGenerator([model], task.target_dictionary, beam_size=beam,
                                               max_len_a=0, max_len_b=out_len, min_len=out_len))
    prefix = torch.full((batch, 1), task.lang_token("de"), device=device)

    def decode(name):
        model, gen = gens[name]

        def run():
            with torch.no_grad():
                gen.generate([model], {"net_input": net_input}, prefix_tokens=prefix)
        return run

    t = compare(clock, {k: decode(k) for k in gens}, repeats, warmup)
    with torch.no_grad():  # the merged model really is the LSLo model for en->de
        a = gens["unmerged"][1].generate([lslo], {"net_input": net_input}, prefix_tokens=prefix)
        b = gens["merged"][1].generate([merged], {"net_input": net_input}, prefix_tokens=prefix)
    same = all(torch.equal(x[0]["tokens"], y[0]["tokens"]) for x, y in zip(a, b))
    return {
        "generate_unmerged_vs_base": t["unmerged"] / t["base"],
        "generate_merged_vs_base": t["merged"] / t["base"],
        "generate_seconds": dict(t),
        "round_ratios": {"generate_unmerged_vs_base": t.round_ratios("unmerged", "base"),
                         "generate_merged_vs_base": t.round_ratios("merged", "base")},
        "generate_merged_same_hypotheses": same,
        "generate_setup": f"{dims['layers']}+{dims['layers']} layers, dim {dims['dim']}, vocab {dims['vocab']}, "
                          f"{batch} sentences x {src_len} tokens, beam {beam}, {out_len} output tokens",
    }


# --- driver --------------------------------------------------------------------------------
def verdict(name: str, value: float, round_ratios: Optional[List[float]]) -> dict:
    op, target = TARGETS[name]
    met = value <= target if op == "<=" else value >= target
    out = {"value": round(value, 4), "target": f"{op} {target}", "met": met}
    if round_ratios is not None:
        out["round_ratio_quartiles"] = round_ratios  # the same ratio round by round: its spread
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or 'CPU'} ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(device: torch.device, quick: bool, evaluate_only: bool = False) -> dict:
    clock = Clock(device)
    gpu = device.type == "cuda"
    r = 2 if quick else 1
    train_dims = dict(layers=12, dim=1024, ffn=4096, heads=16, vocab=256206) if gpu else \
        dict(layers=6, dim=512, ffn=2048, heads=8, vocab=8000)
    results: dict = {}
    spread: Dict[str, List[float]] = {}
    load_before = load_average()

    def collect(section: dict) -> dict:
        spread.update(section.pop("round_ratios", {}))
        results.update(section)
        return section

    t0 = time.time()
    if not evaluate_only:
        run_speed_figures(device, clock, r, train_dims, collect, results, t0)
    # the generation benchmark's model and sizes, 12 directions of the 12 languages
    collect(bench_evaluate(train_dims, [c for c, _ in LANGS], lang_codes(), rank_spec(), n_directions=12,
                           sentences=32 if gpu else 8, beam=5, out_len=24, device=device, repeats=1 if quick else 2))
    print(f"[bench] evaluation done ({time.time() - t0:.0f}s)", file=sys.stderr)
    return {
        "format": "lslo-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "clock": clock.name if not evaluate_only else results["evaluate_seconds"]["clock"],
        "torch": torch.__version__,
        "command": " ".join(["python -m bench.speed"] + sys.argv[1:]),
        "seconds": round(time.time() - t0, 1),
        "load_average_1_5_15_min": {"before": load_before, "after": load_average()},
        "method": "each figure: median over interleaved repeats (rotating order) after warm-up, in one process; "
                  "evaluate_*: child processes, see details.evaluate_setup",
        "figures": {name: verdict(name, results[name], spread.get(name)) for name in TARGETS if name in results},
        "details": results,
    }


def run_speed_figures(device, clock, r, train_dims, collect, results, t0) -> None:
    """The in-process figures: one LSLo layer, training steps, optimizer state, beam search."""
    gpu = device.type == "cuda"
    collect(bench_module(device, clock, repeats=max(3, 16 // r), warmup=3))
    print(f"[bench] module done ({time.time() - t0:.0f}s)", file=sys.stderr)
    train = collect(bench_training(train_dims, batch=64 if gpu else 16, length=32, device=device, clock=clock,
                                   repeats=max(3, 9 // r), warmup=2))
    print(f"[bench] training done ({time.time() - t0:.0f}s)", file=sys.stderr)
    per_param = {k: train["optimizer_state_bytes_train_dims"][k] / train["trainable_parameters_train_dims"][k]
                 for k in ("full", "lslo")}
    results["optimizer_state_bytes_per_trainable_parameter"] = per_param
    results.update(optimizer_state_615m(per_param))
    gen_dims = train_dims
    collect(bench_generation(gen_dims, batch=32 if gpu else 8, src_len=24, out_len=24, beam=5,
                                    device=device, clock=clock, repeats=max(3, 10 // r), warmup=2))
    print(f"[bench] generation done ({time.time() - t0:.0f}s)", file=sys.stderr)


def table(report: dict) -> str:
    lines = [f"LSLo benchmark - {report['date']} - {report['device']} - clock: {report['clock']}",
             "", "| figure | measured | round by round (q1-q3) | target | met |", "|---|---|---|---|---|"]
    for name, f in report["figures"].items():
        q = f.get("round_ratio_quartiles")
        spread = f"{q[0]:.3f}-{q[2]:.3f}" if q else "-"
        lines.append(f"| `{name}` | {f['value']:.3f} | {spread} | {f['target']} | {'yes' if f['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default=None, help="JSON output (default: results/bench/bench.json, "
                                                "results/bench/bench-gpu.json on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    p.add_argument("--evaluate-only", action="store_true",
                   help="only the evaluation figure (one lslo-evaluate process vs one fairseq-generate process per "
                        "direction); default output results/bench/bench-evaluate.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    name = "bench-evaluate" if args.evaluate_only else "bench"
    out = args.out or os.path.join("results", "bench", f"{name}-gpu.json" if device.type == "cuda" else f"{name}.json")
    report = run(device, args.quick, args.evaluate_only)
    from lslo_common.atomic import atomic_write

    atomic_write(out, lambda f: f.write((json.dumps(report, indent=2, default=str) + "\n").encode("utf-8")))
    print(table(report))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
