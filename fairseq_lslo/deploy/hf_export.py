"""``lslo-export-hf``: one direction as a Hugging Face ``M2M100ForConditionalGeneration`` directory.

    lslo-export-hf CHECKPOINT -s en -t de --data DATA -o en-de-hf/ [--spm sentencepiece.model]

CHECKPOINT is an LSLo checkpoint (the direction's adapters are merged first, as by
``lslo-merge``) or a merged / plain fairseq ``transformer`` checkpoint.  The directory holds
``config.json``, ``generation_config.json`` (decoder start ``</s>``, the target language token
forced first, as fairseq's ``--decoder-langtok`` does) and ``model.safetensors``; with
``--spm`` also M2M100Tokenizer's files, and the model's token ids then follow that
tokenizer's numbering (see :func:`~fairseq_lslo.deploy.m2m100.tokenizer_numbering`).  ``M2M100ForConditionalGeneration.from_pretrained``
loads it.  Needs the ``deploy`` extra (transformers).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from argparse import Namespace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import LSLoConfigError, LSLoFileError
from ..modules.spec import CONFIG_KEY
from .m2m100 import (UnsupportedForM2M100, build_m2m100, language_token_id, specials_of,
                     tokenizer_numbering, write_tokenizer)
from .merge import DirectionMerger, config_of, merged_direction, plain_model_args, writable_directory


def direction_model(state: Mapping[str, Any], src: Optional[str], tgt: Optional[str],
                    where: str) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """(plain transformer state, src, tgt): an LSLo checkpoint merged for the direction, a plain one as is."""
    if CONFIG_KEY in state["model"]:
        if src is None or tgt is None:
            raise LSLoConfigError(f"{where} is an LSLo checkpoint: give the direction with --source-lang/--target-lang")
        return DirectionMerger(state["model"], where).merged_state(src, tgt), src, tgt
    made_for = merged_direction(state)
    if made_for:  # a merged checkpoint holds one direction's adapters: another one would be silently wrong
        own = tuple(made_for.split("-"))
        if (src or own[0], tgt or own[1]) != own:
            raise LSLoConfigError(f"{where} was merged for {made_for} (lslo-merge) and holds only that direction's "
                                  f"adapters; asked for {src or own[0]}-{tgt or own[1]} (--source-lang/--target-lang)")
        src, tgt = own
    if src is None or tgt is None:
        raise LSLoConfigError(f"{where} does not say its direction: give --source-lang and --target-lang")
    return dict(state["model"]), src, tgt


def task_dictionary(cfg: Mapping[str, Any], data: str, src: str, tgt: str):
    """The target dictionary exactly as the checkpoint's fairseq task builds it (language tokens included)."""
    from fairseq import tasks

    if not os.path.isdir(data):
        raise LSLoFileError(f"--data {data}: no such directory (the fairseq data directory with dict.*.txt)")
    task_args = Namespace(**dict(cfg.get("task") or {}))
    task_args.data, task_args.source_lang, task_args.target_lang = data, src, tgt
    try:
        task = tasks.setup_task(task_args)
    except (FileNotFoundError, OSError) as e:
        raise LSLoFileError(f"--data {data}: cannot load the dictionaries of {src}-{tgt}: {e}") from None
    if task.source_dictionary.symbols != task.target_dictionary.symbols:
        raise UnsupportedForM2M100(f"--data {data}: source and target dictionaries differ; M2M-100 has one vocabulary")
    return task.target_dictionary


def give_default_modes(tree: str) -> None:
    """The modes ``mkdir``/``open`` would give under the umask (0755/0644 under 022), for the whole tree.

    ``tempfile.mkdtemp`` makes the directory 0700 and some writers make files 0600: renamed into
    place as they are, another account or a container could not read the export.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tree, 0o777 & ~umask)
    for parent, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(parent, name)):
                os.chmod(os.path.join(parent, name), 0o666 & ~umask)


def replace_directory(tmp: str, out: str) -> None:
    """Move the finished directory ``tmp`` to ``out``; an existing ``out`` is swapped out only at the end."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(out)))
    os.rename(out, os.path.join(old, "previous"))
    os.rename(tmp, out)
    shutil.rmtree(old)


def export_direction(state: Mapping[str, Any], data: str, out: str, src: Optional[str] = None,
                     tgt: Optional[str] = None, spm: Optional[str] = None, where: str = "the checkpoint") -> List[str]:
    """Write the direction's M2M-100 directory to ``out`` (atomically); returns the file names written."""
    model, src, tgt = direction_model(state, src, tgt, where)
    cfg = config_of(state)
    dictionary = task_dictionary(cfg, data, src, tgt)
    symbols = list(dictionary.symbols)
    if len(symbols) != model["encoder.embed_tokens.weight"].shape[0]:
        raise UnsupportedForM2M100(f"--data {data}: the dictionary has {len(symbols)} entries, the model's "
                                   f"embedding {model['encoder.embed_tokens.weight'].shape[0]} rows")
    forced = language_token_id(symbols, tgt, "--target-lang")
    vocab, order = tokenizer_numbering(symbols) if spm is not None else (None, None)
    hf = build_m2m100(plain_model_args(cfg["model"]), model, specials_of(dictionary), forced, order)
    hf.config.lslo_direction = f"{src}-{tgt}"  # config.json says which direction's adapters the weights hold
    parent = writable_directory(os.path.dirname(os.path.abspath(out)), "-o/--output (its directory)")
    tmp = tempfile.mkdtemp(prefix=".tmp-", suffix=os.path.basename(out), dir=parent)
    try:
        hf.to(model["encoder.embed_tokens.weight"].dtype).save_pretrained(tmp)
        if spm is not None:
            write_tokenizer(tmp, vocab, spm, src, tgt)
        names = sorted(os.listdir(tmp))
        give_default_modes(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names
