"""``lslo-evaluate``: decode many directions with one model load, then score spBLEU and chrF++.

    lslo-evaluate DATA --task translation_multi_simple_epoch --lang-pairs en-fr,fr-en,... \\
        --lang-dict DATA/lang_dict.txt --encoder-langtok src --decoder-langtok \\
        --path checkpoint_best.pt --gen-subset test --beam 5 --remove-bpe sentencepiece \\
        --max-tokens 8000 --out-dir EVAL --raw RAW --spm-model sentencepiece.bpe.model

Takes fairseq-generate's flags (the same parser) plus the ones below.  Loads the checkpoint once,
decodes every direction of ``--lang-pairs`` (or ``--directions``) with the task's own sequence
generator in mixed-direction batches, writes ``OUT/gen/{src}-{tgt}.gen`` in fairseq-generate's
format with a record of the model that produced it (``.gen.json``), then ``OUT/scores.tsv``,
``scores.md`` and ``heatmap.png`` through ``lslo_data_prep.score``.  The language groups of the tables
come from ``--lang-groups FILE``, else ``DATA/langs.tsv`` (as ``lslo_data_prep`` writes it), else the
checkpoint's own LSLo configuration (a plain model: one group); FLORES codes are not needed.
A rerun skips the directions already decoded by the same model with the same settings;
``--shard I/N`` decodes one share of the directions (no scoring: score once every share is done).
"""
from __future__ import annotations

import ast
import os
import sys
import time
from argparse import Namespace
from typing import Dict, List, Optional, Tuple

import torch

from lslo_common.atomic import atomic_write_text
from lslo_common.langset_file import LangRow
from lslo_data_prep.hypotheses import mismatch, model_identity, read_record, write_record
from lslo_data_prep.langsets import read_langset
from lslo_data_prep.score import Scorer, check_directions, score

from ..checkpoint_io import load_checkpoint
from ..errors import LSLoError, LSLoFileError
from ..langtok import lang_token
from .decode import Direction, OutputFormat, Progress, decode, load_directions, plan_batches


class EvaluateError(LSLoError, ValueError):
    """Bad input: the message names the flag, file or direction."""


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EvaluateError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise EvaluateError(f"--shard {text!r}: expected 0 <= I < N")
    return i, n


def overrides_of(args) -> dict:
    overrides = ast.literal_eval(args.model_overrides) if args.model_overrides else {}
    if args.lslo_adapters:
        if not os.path.isfile(args.lslo_adapters):
            raise EvaluateError(f"--lslo-adapters {args.lslo_adapters} does not exist")
        overrides.update(arch="lslo_transformer", _name="lslo_transformer", lslo_adapters=args.lslo_adapters)
    return overrides


def select_directions(args) -> Tuple[List[str], List[str]]:
    """(all directions of this evaluation, those of this shard)."""
    lang_pairs = [p for p in str(args.lang_pairs or "").split(",") if p]
    if not lang_pairs:
        raise EvaluateError("--lang-pairs: no directions given")
    wanted = [p for p in args.directions.split(",") if p] if args.directions else lang_pairs
    for pair in wanted:
        if pair not in lang_pairs:
            raise EvaluateError(f"--directions: {pair} is not one of --lang-pairs")
    i, n = parse_shard(args.shard)
    return wanted, wanted[i::n]


def settings_of(args, dtype: str) -> dict:
    """What changes the hypotheses besides the model: recorded per direction, compared on resume."""
    keys = ("gen_subset", "beam", "nbest", "max_len_a", "max_len_b", "min_len", "lenpen", "unkpen", "unnormalized",
            "no_repeat_ngram_size", "sampling", "sampling_topk", "sampling_topp", "temperature", "seed",
            "diverse_beam_groups", "diverse_beam_strength", "diversity_rate", "match_source_len", "post_process",
            "bpe", "tokenizer", "model_overrides", "lslo_adapters")
    out = {k: getattr(args, k, None) for k in keys}
    out["dtype"] = dtype
    return out


def data_paths(args) -> List[str]:
    """The data directories of DATA (fairseq's ``dir1:dir2`` shards); a missing one is an error."""
    paths = [p for p in str(args.data).split(os.pathsep) if p]
    for path in paths or [str(args.data)]:
        if not os.path.isdir(path):
            raise LSLoFileError(f"DATA {path}: no such directory (the fairseq data directory written by "
                                f"fairseq-preprocess, with dict.*.txt and the {args.gen_subset} split)")
    return paths


def check_split(args, pairs: List[str]) -> None:
    """Every direction has its ``--gen-subset`` binaries in the first data directory (either orientation)."""
    first = data_paths(args)[0]
    names = os.listdir(first)
    split = args.gen_subset
    for pair in pairs:
        src, tgt = pair.split("-")
        prefixes = (f"{split}.{src}-{tgt}.{src}.", f"{split}.{tgt}-{src}.{src}.")
        if not any(n.startswith(prefixes) for n in names):
            raise LSLoFileError(f"--gen-subset {split}: DATA {first} has no {split} split for {pair} (expected "
                                f"{prefixes[0]}bin/.idx or {prefixes[1]}bin/.idx)")


def lslo_spec(state: dict, args):
    """(LSLo configuration, where it was read) of the checkpoint or its --lslo-adapters file; (None, None)."""
    from ..modules.adapter_file import load_adapters
    from ..modules.spec import CONFIG_KEY, LSLoSpec

    if CONFIG_KEY in state["model"]:
        return LSLoSpec.from_state(state["model"], args.path), args.path
    if args.lslo_adapters:
        return load_adapters(args.lslo_adapters)[0], args.lslo_adapters
    return None, None


def language_groups(args, state: dict, pairs: List[str]) -> Tuple[List[LangRow], str]:
    """(language rows with their groups, where they come from) for the score tables."""
    if args.lang_groups:
        if not os.path.isfile(args.lang_groups):
            raise LSLoFileError(f"--lang-groups {args.lang_groups}: no such file "
                                f"(rows 'code<TAB>[flores_code<TAB>]group')")
        return read_langset(args.lang_groups, flores_optional=True), f"--lang-groups {args.lang_groups}"
    beside_data = os.path.join(data_paths(args)[0], "langs.tsv")
    if os.path.isfile(beside_data):
        return read_langset(beside_data, flores_optional=True), beside_data
    spec, where = lslo_spec(state, args)
    if spec is not None:
        return [LangRow(code, None, group) for code, group in spec.languages], f"the LSLo configuration of {where}"
    codes = list(dict.fromkeys(code for pair in pairs for code in pair.split("-")))
    return [LangRow(code, None, "all") for code in codes], "--lang-pairs"


def check_languages(state: dict, args, pairs: List[str]) -> None:
    """Every language of ``pairs`` is one of the LSLo checkpoint's (or its adapter file's)."""
    spec, where = lslo_spec(state, args)
    codes = spec.codes if spec is not None else None
    for pair in pairs:
        for code in pair.split("-"):
            if codes is not None and code not in codes:
                raise EvaluateError(f"direction {pair}: {code!r} is not a language of {where} ({', '.join(codes)})")


def check_language_tokens(task, pairs: List[str]) -> None:
    """The dictionary has every language token of ``pairs`` (a plain model's languages are its tokens)."""
    for pair in pairs:
        for code in pair.split("-"):
            tok = lang_token(code, getattr(task.args, "lang_tok_style", "multilingual"))
            if task.source_dictionary.index(tok) == task.source_dictionary.unk():
                raise EvaluateError(f"direction {pair}: the dictionary has no language token {tok} (--lang-dict?)")


def pending(gen_dir: str, pairs: List[str], model: dict, settings: dict) -> List[str]:
    """Directions still to decode; a hypothesis file of another model or other settings is an error."""
    todo = []
    for pair in pairs:
        gen = os.path.join(gen_dir, f"{pair}.gen")
        if not os.path.exists(gen):
            todo.append(pair)
            continue
        problem = mismatch(gen, read_record(gen), model, settings)
        if problem:
            raise EvaluateError(problem + f"; it is kept as it is: evaluate into another --out-dir, or delete it "
                                          f"to decode {pair} again")
    return todo


def build(cfg, args, overrides: dict, pairs: List[str]):
    """(task, model, load seconds): the task, then the checkpoint loaded once, checked, on its device."""
    from fairseq import checkpoint_utils, tasks

    start = time.perf_counter()
    state = checkpoint_utils.load_checkpoint_to_cpu(args.path, overrides)
    check_languages(state, args, pairs)
    task = tasks.setup_task(cfg.task)
    task.training = False  # without -s/-t the multilingual task believes it trains (and wants training data)
    check_language_tokens(task, pairs)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([args.path], arg_overrides=overrides, task=task,
                                                                 state=state)
    del state
    model = models[0]
    if cfg.common.fp16:
        model.half()
    elif cfg.common.bf16:
        model.to(torch.bfloat16)
    if torch.cuda.is_available() and not cfg.common.cpu:
        model.cuda()
    model.prepare_for_inference_(cfg)
    return task, model, time.perf_counter() - start


def build_generator(task, model, cfg):
    """fairseq's generator for the task; the per-direction target token is stripped per sentence (OutputFormat).

    Built by ``FairseqTask.build_generator``: the multilingual task's override only adds the stripping of
    one fixed ``--target-lang`` token (which ``keep_inference_langtok`` turns off anyway) and, with the
    plugin's decoding fixes, refuses to build without ``-t`` (one direction at a time), which is right for
    fairseq-generate and wrong here, where every sentence brings its own target language.
    """
    from fairseq.tasks import FairseqTask
    from omegaconf import OmegaConf

    gen_args = Namespace(**OmegaConf.to_container(cfg.generation, resolve=True))
    gen_args.keep_inference_langtok = True  # the multilingual task would strip one fixed --target-lang token
    return FairseqTask.build_generator(task, [model], gen_args)


def writer(gen_dir: str, model_id: dict, settings: dict):
    def write(d: Direction) -> None:
        gen = os.path.join(gen_dir, f"{d.pair}.gen")
        # the record first, then the hypotheses: a .gen without its record is never left by this tool
        write_record(gen, d.pair, model_id, settings, len(d))
        atomic_write_text(gen, "".join(line + "\n" for i in sorted(d.lines) for line in d.lines[i]))
    return write


def check_files(args) -> None:
    """The files and directories the flags name exist (before fairseq's configuration machinery runs)."""
    if not args.path or not os.path.isfile(args.path):
        raise LSLoFileError(f"--path {args.path}: no such checkpoint file (one checkpoint, not an ensemble)")
    if args.lslo_adapters and not os.path.isfile(args.lslo_adapters):
        raise LSLoFileError(f"--lslo-adapters {args.lslo_adapters}: no such file (an lslo-export .safetensors file)")
    data_paths(args)
    if getattr(args, "lang_dict", None) and not os.path.isfile(args.lang_dict):
        raise LSLoFileError(f"--lang-dict {args.lang_dict}: no such file (one language code per line)")
    all_pairs, pairs = select_directions(args)
    check_languages(load_checkpoint(args.path, mmap=True), args, all_pairs)  # a language the model lacks first
    check_split(args, pairs)


def run(args, cfg) -> int:
    check_files(args)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    if (cfg.common.fp16 or cfg.common.bf16) and not use_cuda:
        raise EvaluateError("--fp16/--bf16 cast the model for a GPU; there is none here (or --cpu is given)")
    if getattr(args, "lang_tok_replacing_bos_eos", False) or not getattr(args, "decoder_langtok", False):
        raise EvaluateError("mixed-direction decoding forces each sentence's target language token as its prefix: "
                            "use --decoder-langtok (without --lang-tok-replacing-bos-eos)")
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = 12000  # fairseq-generate's default
    all_pairs, pairs = select_directions(args)
    scoring = not args.no_score and not args.shard
    gen_dir = os.path.join(args.out_dir, "gen")
    model_id = model_identity({"checkpoint": args.path, "adapters": args.lslo_adapters}, args.model_overrides)
    dtype = "fp16" if cfg.common.fp16 else "bf16" if cfg.common.bf16 else "fp32"
    settings = settings_of(args, dtype)
    langs, langs_where = None, None
    if scoring:  # fail now, not after hours of decoding
        if not args.raw:
            raise EvaluateError("--raw: the references folder is needed for scoring (or pass --no-score)")
        if not os.path.isdir(args.raw):
            raise LSLoFileError(f"--raw {args.raw}: no such directory (plain-text references "
                                f"{args.gen_subset}.LANG)")
        langs, langs_where = language_groups(args, load_checkpoint(args.path, mmap=True), all_pairs)
        check_directions(args.data, args.raw, all_pairs, args.gen_subset, langs, langs_where)
        Scorer(args.spm_model).check()
    todo = pending(gen_dir, pairs, model_id, settings)
    print(f"lslo-evaluate: {len(pairs)} direction(s) here, {len(pairs) - len(todo)} already decoded, "
          f"{len(todo)} to decode", file=sys.stderr)
    if todo:
        decode_all(args, cfg, todo, all_pairs, gen_dir, model_id, settings, use_cuda)
    if not scoring:
        if args.shard and not args.no_score:
            print("lslo-evaluate: --shard decodes only; score once every share is done (a run without --shard, "
                  "or python -m lslo_data_prep.score --checkpoint CKPT)", file=sys.stderr)
        return 0
    pending(gen_dir, all_pairs, model_id, settings)  # every direction of the table: decoded by this model
    score(args.data, args.raw, gen_dir, args.out_dir, args.spm_model, all_pairs, args.gen_subset, model_id, langs,
          langs_where)
    print(open(os.path.join(args.out_dir, "scores.md"), encoding="utf-8").read())
    print(f"{len(all_pairs)} directions scored -> {args.out_dir}/scores.tsv, scores.md, heatmap.png")
    return 0


def decode_all(args, cfg, todo, all_pairs, gen_dir, model_id, settings, use_cuda) -> Dict[str, float]:
    import numpy as np
    from fairseq import utils

    if cfg.common.seed is not None and not cfg.generation.no_seed_provided:
        np.random.seed(cfg.common.seed)
        utils.set_torch_seed(cfg.common.seed)
    task, model, load_s = build(cfg, args, overrides_of(args), all_pairs)
    directions = load_directions(task, args.gen_subset, todo)
    for d in directions:
        if len(d) == 0:
            raise EvaluateError(f"direction {d.pair}: no sentences in {args.gen_subset} of {args.data}")
    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    batches = plan_batches(directions, cfg.dataset.max_tokens, cfg.dataset.batch_size, max_positions)
    generator = build_generator(task, model, cfg)
    bpe, tokenizer = task.build_bpe(cfg.bpe), task.build_tokenizer(cfg.tokenizer)

    def decode_fn(x: str) -> str:
        if bpe is not None:
            x = bpe.decode(x)
        if tokenizer is not None:
            x = tokenizer.decode(x)
        return x

    fmt = OutputFormat(task, generator, cfg.common_eval.post_process, cfg.generation.nbest, decode_fn)
    device = torch.device("cuda" if use_cuda else "cpu")
    total = sum(len(d) for d in directions)
    print(f"lslo-evaluate: model loaded in {load_s:.1f}s; {total} sentences of {len(directions)} direction(s) "
          f"in {len(batches)} batches", file=sys.stderr)
    progress = Progress(total, sys.stderr, args.progress_interval)
    timings = decode(directions, batches, model, generator, fmt, device, writer(gen_dir, model_id, settings),
                     progress)
    progress.close()
    print(f"lslo-evaluate: decoded {timings['sentences']} sentences in {timings['decode_s']:.1f}s "
          f"(model load {load_s:.1f}s)", file=sys.stderr)
    return {"load_s": load_s, **timings}
