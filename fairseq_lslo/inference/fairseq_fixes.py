"""Small fixes to fairseq 0.12's ``translation_multi_simple_epoch`` for decoding, installed by the plugin.

Each wraps one fairseq function and changes only what its docstring says:

* :func:`_build_generator`: accepts ``prefix_allowed_tokens_fn`` (fairseq's hub interface passes it;
  0.12's override of ``build_generator`` lacks the keyword, so ``.translate()`` failed with a
  TypeError) and, without ``-t``, stops with an error naming ``-s``/``-t`` instead of ``KeyError: None``;
* :func:`_get_batch_iterator`: in decoding (``-s``/``-t`` given) batches take any number of
  sentences (``--required-batch-size-multiple 1``): fairseq-fixed drops the last batch when its
  size is not a multiple (default 8), so test sentences went missing without a word;
* :func:`_build_model`: a checkpoint written by ``lslo-merge`` used for another direction stops
  with an error naming the direction it was made for;
* :func:`_setup_task`: ``langs="en,de,fr"`` given as a string (e.g. to ``from_pretrained``) is read
  as a list, not as characters;
* :func:`_overwrite_args_by_name`: the task and model sections of a merged checkpoint (dicts
  that also read as namespaces, see ``lslo-merge``) take ``from_pretrained``'s overrides as a
  fairseq-written checkpoint's do, so ``task='translation_multi_simple_epoch'`` loads it.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import logging
from collections import OrderedDict
from typing import Any, Optional

from ..errors import LSLoConfigError
from ..deploy.merge import MERGED_KEY

logger = logging.getLogger(__name__)

EVERY_SENTENCE = 1


def install() -> None:
    """Wrap the fairseq functions above (once)."""
    from fairseq import checkpoint_utils
    from fairseq.hub_utils import GeneratorHubInterface
    from fairseq.tasks.translation_multi_simple_epoch import TranslationMultiSimpleEpochTask as Task

    if getattr(Task.build_generator, "lslo_wrapped", False):
        return
    Task.build_generator = _wrap(Task.build_generator, _build_generator)
    Task.get_batch_iterator = _wrap(Task.get_batch_iterator, _get_batch_iterator)
    Task.build_model = _wrap(Task.build_model, _build_model)
    Task.setup_task = classmethod(_wrap(Task.setup_task.__func__, _setup_task))
    checkpoint_utils.overwrite_args_by_name = _wrap(checkpoint_utils.overwrite_args_by_name, _overwrite_args_by_name)
    GeneratorHubInterface.string = _wrap(GeneratorHubInterface.string, _hub_string)


def _wrap(original, replacement):
    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        return replacement(original, *args, **kwargs)

    wrapped.lslo_wrapped = True
    return wrapped


def _build_generator(original, task, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                     prefix_allowed_tokens_fn=None):
    """fairseq's, plus ``prefix_allowed_tokens_fn`` (passed on) and a clear error without ``-t``."""
    _, tgt_spec = task.args.langtoks["main"]
    keep = getattr(args, "keep_inference_langtok", False)
    if tgt_spec and task.args.target_lang is None and not keep:  # where fairseq 0.12 fails with KeyError: None
        raise LSLoConfigError(
            "translation_multi_simple_epoch decodes one direction at a time: give -s/--source-lang and "
            "-t/--target-lang (e.g. -s en -t de); to translate many directions at once use fairseq_lslo.Translator"
        )
    if prefix_allowed_tokens_fn is None:
        return original(task, models, args, seq_gen_cls, extra_gen_cls_kwargs)
    from fairseq.tasks import FairseqTask

    extra = dict(extra_gen_cls_kwargs or {})
    if tgt_spec and not keep:  # what the original strips
        extra["symbols_to_strip_from_output"] = {task.data_manager.get_decoder_langtok(task.args.target_lang, tgt_spec)}
    return FairseqTask.build_generator(task, models, args, seq_gen_cls=seq_gen_cls, extra_gen_cls_kwargs=extra,
                                       prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)


def _get_batch_iterator(original, task, *args, **kwargs):
    """In decoding, every sentence: ``required_batch_size_multiple`` 1 (fairseq-fixed drops a short last batch)."""
    bound = inspect.signature(original).bind(task, *args, **kwargs)
    multiple = bound.arguments.get("required_batch_size_multiple", EVERY_SENTENCE)
    if not task.training and multiple != EVERY_SENTENCE:
        logger.info("LSLo: decoding with --required-batch-size-multiple 1 instead of %s, so that no sentence is "
                    "dropped (fairseq-fixed drops a last batch whose size is not a multiple)", multiple)
        bound.arguments["required_batch_size_multiple"] = EVERY_SENTENCE
    return original(*bound.args, **bound.kwargs)


def _build_model(original, task, args, *rest, **kwargs):
    """fairseq's; a merged checkpoint asked for another direction than its own is refused."""
    made_for = _section_value(args, MERGED_KEY)
    src, tgt = task.args.source_lang, task.args.target_lang
    if made_for and src and tgt and f"{src}-{tgt}" != made_for:
        raise LSLoConfigError(
            f"this checkpoint was merged for {made_for} (lslo-merge) and translates only that direction; asked for "
            f"{src}-{tgt} (-s/-t): use the LSLo checkpoint with --user-dir, or merge {src}-{tgt}"
        )
    return original(task, args, *rest, **kwargs)


def _setup_task(original, cls, args, **kwargs):
    """``langs`` given as one comma-separated string is a list of languages."""
    langs = getattr(args, "langs", None)
    if isinstance(langs, str):
        args.langs = [code.strip() for code in langs.split(",") if code.strip()]
    return original(cls, args, **kwargs)


def _overwrite_args_by_name(original, cfg, overrides):
    """Dict-and-namespace sections (merged checkpoints) become Namespaces first, as fairseq's own are; a
    ``langs`` override must be the language list the checkpoint was trained with (it fixes the token ids)."""
    for key in list(cfg.keys()):
        section = cfg[key] if key in cfg else None
        if isinstance(section, OrderedDict) and vars(section):
            cfg[key] = argparse.Namespace(**section)
    if overrides and overrides.get("langs") and "task" in cfg:
        _check_langs_override(cfg["task"], overrides["langs"])
    return original(cfg, overrides)


def _check_langs_override(task_cfg: Any, langs: Any) -> None:
    given = [c.strip() for c in langs.split(",")] if isinstance(langs, str) else list(langs)
    trained = _section_value(task_cfg, "langs")
    if not trained and not _section_value(task_cfg, "lang_dict"):
        pairs = _section_value(task_cfg, "lang_pairs") or []
        pairs = pairs.split(",") if isinstance(pairs, str) else list(pairs)
        trained = sorted({code for pair in pairs for code in pair.split("-")})  # what fairseq derived
    trained = trained.split(",") if isinstance(trained, str) else list(trained or [])
    if trained and given != trained:
        raise LSLoConfigError(
            f"langs={','.join(given)}: the checkpoint was trained with the language list {','.join(trained)}, in "
            f"that order (it fixes the language tokens' ids): pass langs='{','.join(trained)}' or leave langs out"
        )


def _hub_string(original, hub, tokens):
    """The hub's ``translate()`` output without the target language token, as fairseq-generate prints it."""
    from fairseq.tasks.translation_multi_simple_epoch import TranslationMultiSimpleEpochTask

    task = getattr(hub, "task", None)
    if isinstance(task, TranslationMultiSimpleEpochTask) and task.args.target_lang and \
            not getattr(hub.cfg.generation, "keep_inference_langtok", False):
        _, tgt_spec = task.args.langtoks["main"]
        if tgt_spec:
            tokens = tokens[tokens != task.data_manager.get_decoder_langtok(task.args.target_lang, tgt_spec)]
    return original(hub, tokens)


def _section_value(section: Any, key: str) -> Optional[Any]:
    if isinstance(section, dict):
        return section.get(key)
    try:
        return getattr(section, key, None)
    except Exception:  # an OmegaConf node in struct mode raises for unknown keys
        return None
