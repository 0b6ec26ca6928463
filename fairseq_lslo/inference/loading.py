"""Loading a checkpoint for translation: its files, its task and its model, as fairseq builds them.

A checkpoint is one of: an LSLo checkpoint; a plain fairseq ``transformer`` (a base model, or a
published FLORES-101 one); a plain one plus an ``lslo-export`` adapter file; a checkpoint written
by ``lslo-merge`` (one direction).  The dictionaries and the SentencePiece model are taken where
given, else from beside the checkpoint (``dict.txt`` or ``dict.{lang}.txt``,
``sentencepiece.bpe.model``, ``language_pairs.txt``, as the published FLORES-101 model
directories hold them), else from the data directory the checkpoint was trained on.
"""
from __future__ import annotations

import argparse
import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..deploy.merge import merged_direction  # noqa: F401  (a merged file's direction: its writer's format)
from ..errors import LSLoConfigError, LSLoFileError
from ..modules.spec import CONFIG_KEY

TASK = "translation_multi_simple_epoch"
SPM_NAMES = ("sentencepiece.bpe.model", "spm.model", "sentencepiece.model")


def as_dict(section: Any) -> Dict[str, Any]:
    """A configuration section (Namespace, dict, OmegaConf) as a plain dict."""
    if section is None:
        return {}
    if isinstance(section, argparse.Namespace):
        return dict(vars(section))
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(section, DictConfig):
            return dict(OmegaConf.to_container(section, resolve=True))
    except ImportError:  # omegaconf comes with fairseq
        pass
    if isinstance(section, Mapping):
        return dict(section)
    return dict(vars(section))


def checkpoint_config(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The task and model sections of a checkpoint's configuration (``cfg``, or converted legacy ``args``)."""
    cfg = state.get("cfg")
    if cfg is None and state.get("args") is not None:
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        cfg = convert_namespace_to_omegaconf(state["args"])
    if cfg is None:
        raise LSLoConfigError("the checkpoint has neither 'cfg' nor 'args': cannot tell how it was trained")
    return {"task": cfg["task"], "model": cfg["model"]}


def pairs_file_beside(path: str) -> Optional[str]:
    """``language_pairs.txt`` next to the checkpoint (the published model directories ship one), if any."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "language_pairs.txt")
    return candidate if os.path.isfile(candidate) else None


@dataclass
class ModelFiles:
    """Where the dictionaries and the SentencePiece model are."""

    data: str  # directory handed to the task as its data
    shared_dict: Optional[str]  # one dictionary for all languages (dict.txt), or None: dict.{lang}.txt in data
    spm: str
    pairs_file: Optional[str]  # language_pairs.txt beside the checkpoint, if any


def find_files(path: str, cfg_task: Mapping[str, Any], langs: Sequence[str], data: Optional[str],
               spm: Optional[str]) -> ModelFiles:
    """The dictionaries and SentencePiece model of a checkpoint: given, beside it, or where it was trained."""
    here = os.path.dirname(os.path.abspath(path))
    pairs_file = os.path.join(here, "language_pairs.txt")
    pairs_file = pairs_file if os.path.isfile(pairs_file) else None
    candidates = [("data=", data)] if data is not None else [("beside the checkpoint", here),
                                                            ("the checkpoint's data directory", cfg_task.get("data"))]
    if data is not None and not os.path.isdir(data):
        raise LSLoFileError(f"data={data}: no such directory (expected the fairseq data directory with dict.LANG.txt)")
    dictionaries = None
    for _, folder in candidates:
        if not folder or not os.path.isdir(str(folder)):
            continue
        folder = str(folder)
        if all(os.path.isfile(os.path.join(folder, f"dict.{lang}.txt")) for lang in langs):
            dictionaries = (folder, None)
            break
        if os.path.isfile(os.path.join(folder, "dict.txt")):
            dictionaries = (folder, os.path.join(folder, "dict.txt"))
            break
    if dictionaries is None:
        where = " or ".join(f"{name} ({folder})" for name, folder in candidates if folder)
        raise LSLoFileError(
            f"{path}: no dictionaries found {'in ' + where if where else ''}: expected dict.txt or "
            f"dict.{{{','.join(langs)}}}.txt; pass data=DIR (the fairseq data directory the model was trained with)"
        )
    return ModelFiles(dictionaries[0], dictionaries[1], find_spm(path, here, spm), pairs_file)


def find_spm(path: str, here: str, spm: Optional[str]) -> str:
    if spm is not None:
        if not os.path.isfile(spm):
            raise LSLoFileError(f"spm={spm}: no such SentencePiece model file")
        return spm
    for name in SPM_NAMES:
        if os.path.isfile(os.path.join(here, name)):
            return os.path.join(here, name)
    found = sorted(glob.glob(os.path.join(here, "*.model")))
    if len(found) == 1:
        return found[0]
    raise LSLoFileError(
        f"{path}: no SentencePiece model beside the checkpoint ({', '.join(SPM_NAMES)}); pass spm=FILE "
        f"(the model the data was encoded with)"
    )


def read_pairs(cfg_task: Mapping[str, Any], pairs_file: Optional[str]) -> List[str]:
    """The checkpoint's directions: its ``--lang-pairs``, else ``language_pairs.txt``."""
    pairs = cfg_task.get("lang_pairs")
    if isinstance(pairs, str):
        pairs = pairs.split(",")
    if not pairs and pairs_file:
        with open(pairs_file, encoding="utf-8") as f:
            pairs = f.read().replace("\n", ",").split(",")
    pairs = [p.strip() for p in pairs or [] if p and p.strip()]
    if not pairs:
        raise LSLoConfigError("the checkpoint names no language pairs (--lang-pairs) and no language_pairs.txt lies beside it")
    return pairs


def language_list(cfg_task: Mapping[str, Any], pairs: Sequence[str], pairs_file: Optional[str]) -> List[str]:
    """The language list whose tokens fairseq appended to the dictionary, in that order (as ``load_langs``)."""
    langs = cfg_task.get("langs")
    if isinstance(langs, str):
        langs = [x for x in langs.split(",") if x]
    if langs:
        return list(langs)
    lang_dict = cfg_task.get("lang_dict")
    if lang_dict and os.path.isfile(str(lang_dict)):
        with open(str(lang_dict), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    names = set(p for pair in pairs for p in pair.split("-"))
    if pairs_file:  # the published model directories: the full pair list ships beside the model
        with open(pairs_file, encoding="utf-8") as f:
            names |= {c for pair in f.read().replace("\n", ",").split(",") if pair.strip() for c in pair.strip().split("-")}
    return sorted(names)


def task_namespace(cfg_task: Mapping[str, Any], files: ModelFiles, langs: List[str], pairs: List[str]) -> argparse.Namespace:
    """The checkpoint's task configuration, pointed at the files found, in inference mode for ``pairs[0]``."""
    values = dict(cfg_task)
    if (values.get("task") or values.get("_name") or TASK) != TASK:
        raise LSLoConfigError(f"the checkpoint was trained with task {values.get('task') or values.get('_name')!r}; "
                              f"the Translator serves {TASK} models")
    src, tgt = pairs[0].split("-")
    values.update(task=TASK, _name=TASK, data=files.data, langs=langs, lang_dict=None, lang_pairs=list(pairs),
                  source_lang=src, target_lang=tgt, source_dict=files.shared_dict, target_dict=files.shared_dict,
                  fixed_dictionary=None)
    values.setdefault("lang_tok_style", "multilingual")
    return argparse.Namespace(**values)


def model_namespace(cfg_model: Mapping[str, Any], adapters: Optional[str]) -> argparse.Namespace:
    """The checkpoint's model configuration; with ``adapters`` an ``lslo_transformer`` that loads them."""
    values = dict(cfg_model)
    if adapters is not None:
        if not os.path.isfile(adapters):
            raise LSLoFileError(f"adapters={adapters}: no such adapter file (written by lslo-export)")
        values = {k: v for k, v in values.items() if not k.startswith("lslo_")}
        values.update(arch="lslo_transformer", _name="lslo_transformer", lslo_adapters=adapters)
    return argparse.Namespace(**values)


def check_vocabulary(task, model_state: Mapping[str, torch.Tensor], langs: Sequence[str], path: str) -> None:
    """The dictionary plus language tokens must have the embedding's size (else the language list is wrong)."""
    rows = model_state.get("encoder.embed_tokens.weight")
    if rows is None:
        return
    size = len(task.source_dictionary)
    if size != rows.shape[0]:
        raise LSLoConfigError(
            f"{path}: the dictionary with {len(langs)} language tokens ({','.join(langs)}) has {size} entries, the "
            f"model's embedding {rows.shape[0]} rows: the language list differs from training (give the "
            f"checkpoint's --langs / --lang-dict, or the language_pairs.txt it was trained with)"
        )


def is_lslo_state(model_state: Mapping[str, Any]) -> bool:
    return CONFIG_KEY in model_state
