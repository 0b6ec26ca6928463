"""A plain fairseq ``transformer`` as a Hugging Face ``M2M100ForConditionalGeneration``: configuration,
parameter names and tokenizer files.

M2M-100 in transformers is fairseq's pre-norm transformer with sinusoidal positions (offset
``padding_idx + 1``, as fairseq's), final encoder/decoder layer norms, no embedding layer norm
and one embedding matrix shared by the encoder, the decoder and the output projection.  A
fairseq model outside that family is refused with the reason (:func:`unsupported`), never
converted approximately.  transformers is imported only here and only when called (the
``deploy`` extra); the plugin never imports this module.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import LSLoError, LSLoFileError
from ..langtok import lang_token

# fairseq --activation-fn -> transformers ACT2FN name (same function)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new",
               "swish": "silu", "tanh": "tanh", "linear": "linear"}
EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
HF_SHARED = "model.shared.weight"
HF_TIED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
# fairseq buffers with no counterpart (sinusoidal tables are recomputed by both libraries)
_DROPPED = re.compile(r"^(encoder|decoder)\.(version|embed_positions\._float_tensor)$")
_LAYER_KEY = re.compile(r"^(encoder|decoder)\.(layers\.\d+\..+|layer_norm\.(weight|bias))$")


class UnsupportedForM2M100(LSLoError, ValueError):
    """The fairseq model (or its dictionary) has something M2M100ForConditionalGeneration cannot express."""


class MissingPackageError(LSLoError, ImportError):
    """An optional deployment package (the ``deploy`` extra) is not installed; the message says how to install it."""


def hide_unloadable_torchaudio() -> None:
    """Mark an installed torchaudio that cannot be imported as absent (``None`` in ``sys.modules``).

    fairseq depends on torchaudio, and the newest on PyPI (2.11) cannot load its compiled
    extension under torch 2.13; transformers imports torchaudio whenever it is installed, so
    without this even its text models fail to import.  A working torchaudio is left alone.
    """
    if "torchaudio" in sys.modules:
        return
    try:
        importlib.import_module("torchaudio")
    except (OSError, ImportError):
        sys.modules["torchaudio"] = None  # type: ignore[assignment]  # Python's way to block an import


def require(module: str, purpose: str) -> Any:
    """Import an optional deployment package, or fail saying how to install it."""
    if module.startswith("transformers"):
        hide_unloadable_torchaudio()
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingPackageError(
            f"{purpose} needs the Python package '{package}', which is not installed: "
            f"pip install 'fairseq-lslo[deploy]' (from a checkout: pip install -e '.[deploy]')"
        ) from None


def unsupported(args: Mapping[str, Any]) -> List[str]:
    """Why a fairseq transformer configuration (base_architecture filled) is not an M2M-100 one; [] if it is."""
    problems = []
    for side in ("encoder", "decoder"):
        if not args.get(f"{side}_normalize_before"):
            problems.append(f"post-norm {side} (--{side}-normalize-before not set): M2M-100 layers are pre-norm")
        if args.get(f"{side}_learned_pos"):
            problems.append(f"learned {side} positions (--{side}-learned-pos): M2M-100 uses sinusoidal positions")
    flags = {"no_token_positional_embeddings": "no positional embeddings", "layernorm_embedding": "an embedding "
             "layer norm", "no_decoder_final_norm": "no final decoder layer norm", "cross_self_attention":
             "cross+self attention", "adaptive_softmax_cutoff": "an adaptive softmax", "adaptive_input":
             "adaptive input embeddings", "tie_adaptive_weights": "tied adaptive weights"}
    for flag, what in flags.items():
        if args.get(flag):
            problems.append(f"{what} (--{flag.replace('_', '-')})")
    dims = {k: args.get(k) for k in ("encoder_embed_dim", "decoder_embed_dim", "decoder_input_dim", "decoder_output_dim")}
    if len(set(dims.values())) != 1:
        problems.append(f"embedding dimensions differ ({', '.join(f'{k}={v}' for k, v in dims.items())}): "
                        f"M2M-100 has one d_model")
    if args.get("activation_fn", "relu") not in ACTIVATIONS:
        problems.append(f"--activation-fn {args.get('activation_fn')} (M2M-100 export knows {', '.join(ACTIVATIONS)})")
    return problems


def shared_embedding(model: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The one embedding matrix of the encoder, the decoder and the output projection (else an error)."""
    present = [k for k in EMBEDDING_KEYS if k in model]
    if EMBEDDING_KEYS[0] not in present:
        raise UnsupportedForM2M100(f"no {EMBEDDING_KEYS[0]} in the model state")
    weight = model[EMBEDDING_KEYS[0]]
    for key in present[1:]:
        if not torch.equal(model[key], weight):
            raise UnsupportedForM2M100(f"{key} differs from {EMBEDDING_KEYS[0]}: M2M-100 shares one embedding "
                                       f"matrix (train with --share-all-embeddings)")
    return weight


def m2m100_state(model: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fairseq parameter names -> M2M100ForConditionalGeneration's (tied embeddings stored once)."""
    out = {HF_SHARED: shared_embedding(model)}
    unknown = []
    for key, value in model.items():
        if key in EMBEDDING_KEYS or _DROPPED.match(key):
            continue
        if _LAYER_KEY.match(key):
            out[f"model.{key}"] = value  # layers and final layer norms: the same names under model.
        else:
            unknown.append(key)
    if unknown:
        raise UnsupportedForM2M100(f"parameters with no M2M-100 counterpart: {', '.join(sorted(unknown)[:8])}"
                                   f"{' ...' if len(unknown) > 8 else ''}")
    return out


def m2m100_config(args: Mapping[str, Any], vocab_size: int, specials: Mapping[str, int]) -> Dict[str, Any]:
    """M2M100Config fields for a fairseq transformer with ``args`` (base_architecture filled)."""
    return dict(
        vocab_size=vocab_size,
        max_position_embeddings=max(int(args["max_source_positions"]), int(args["max_target_positions"])),
        d_model=int(args["encoder_embed_dim"]),
        encoder_layers=int(args["encoder_layers"]), decoder_layers=int(args["decoder_layers"]),
        encoder_ffn_dim=int(args["encoder_ffn_embed_dim"]), decoder_ffn_dim=int(args["decoder_ffn_embed_dim"]),
        encoder_attention_heads=int(args["encoder_attention_heads"]),
        decoder_attention_heads=int(args["decoder_attention_heads"]),
        encoder_layerdrop=float(args.get("encoder_layerdrop") or 0.0),
        decoder_layerdrop=float(args.get("decoder_layerdrop") or 0.0),
        activation_function=ACTIVATIONS[args.get("activation_fn", "relu")],
        dropout=float(args.get("dropout") or 0.0), attention_dropout=float(args.get("attention_dropout") or 0.0),
        activation_dropout=float(args.get("activation_dropout") or args.get("relu_dropout") or 0.0),
        scale_embedding=not args.get("no_scale_embedding", False),
        tie_word_embeddings=True,
        pad_token_id=specials["pad"], bos_token_id=specials["bos"], eos_token_id=specials["eos"],
        decoder_start_token_id=specials["eos"],  # fairseq's decoder input starts with </s>
    )


def build_m2m100(args: Mapping[str, Any], model: Mapping[str, torch.Tensor], specials: Mapping[str, int],
                 forced_bos_token_id: int, order: Optional[Sequence[Optional[int]]] = None, max_new_tokens: int = 200):
    """An ``M2M100ForConditionalGeneration`` holding the fairseq transformer ``model`` (eval mode, float32).

    ``order`` (from :func:`tokenizer_numbering`) renumbers the vocabulary: exported id n is
    fairseq id ``order[n]``; ``None`` entries get zero embeddings and are never generated.
    ``specials`` and ``forced_bos_token_id`` are given in fairseq ids.
    """
    problems = unsupported(args)
    if problems:
        raise UnsupportedForM2M100("the model cannot be expressed as M2M-100: " + "; ".join(problems))
    transformers = require("transformers", "the Hugging Face export")
    weights = m2m100_state(model)
    fairseq_ids = list(range(weights[HF_SHARED].shape[0])) if order is None else list(order)
    if order is not None:
        weights[HF_SHARED] = renumber(weights[HF_SHARED], fairseq_ids)
    specials = {k: fairseq_ids.index(v) for k, v in specials.items()}
    forced_bos_token_id = fairseq_ids.index(forced_bos_token_id)
    never = [specials["pad"]] + [n for n, i in enumerate(fairseq_ids) if i is None]
    config = transformers.M2M100Config(**m2m100_config(args, weights[HF_SHARED].shape[0], specials))
    hf = transformers.M2M100ForConditionalGeneration(config)
    expected = set(hf.state_dict()) - set(HF_TIED)
    missing, extra = expected - set(weights), set(weights) - expected
    if missing or extra:
        raise UnsupportedForM2M100(f"parameter names do not line up with M2M-100: missing {sorted(missing)[:6]}, "
                                   f"unexpected {sorted(extra)[:6]}")
    with torch.no_grad():
        for key, value in hf.state_dict().items():
            source = weights[HF_SHARED if key in HF_TIED else key]
            if source.shape != value.shape:
                raise UnsupportedForM2M100(f"{key}: shape {tuple(source.shape)} != M2M-100's {tuple(value.shape)}")
            value.copy_(source.float())
    hf.tie_weights()
    hf.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=specials["eos"], bos_token_id=specials["bos"], eos_token_id=specials["eos"],
        pad_token_id=specials["pad"], forced_bos_token_id=forced_bos_token_id,
        suppress_tokens=never,  # fairseq's generator never emits <pad>; ids without a symbol neither
        max_new_tokens=max_new_tokens,  # fairseq-generate's default length limit (--max-len-b 200)
    )
    return hf.eval()


def is_language_token(symbol: str) -> bool:
    return re.fullmatch(r"__[^_\s]+(?:_[^_\s]+)*__", symbol) is not None


def tokenizer_numbering(symbols: Sequence[str]) -> Tuple[Dict[str, int], List[Optional[int]]]:
    """(vocab.json, the fairseq id behind each exported id) for M2M100Tokenizer's numbering.

    M2M100Tokenizer numbers the language tokens itself: ``__xx__`` of the i-th language of its
    built-in M2M-100 list gets id ``len(vocab.json) + i``, whatever the dictionary says.  The
    exported model therefore follows that numbering: the dictionary's other symbols keep their
    order (ids 0..W-1), then one id per language of the list (``None`` where the model has no
    such language), then the model's languages the list lacks, in dictionary order.
    """
    tokenization = require("transformers.models.m2m_100.tokenization_m2m_100", "the tokenizer export")
    words = [i for i, s in enumerate(symbols) if not is_language_token(s)]
    langs = {s: i for i, s in enumerate(symbols) if is_language_token(s)}
    if not langs:
        raise UnsupportedForM2M100("the dictionary has no language tokens (__xx__)")
    order: List[Optional[int]] = list(words)
    order += [langs.pop(lang_token(code), None) for code in tokenization.FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    order += sorted(langs.values())
    return {symbols[i]: n for n, i in enumerate(words)}, order


def renumber(weight: torch.Tensor, order: Sequence[Optional[int]]) -> torch.Tensor:
    """Rows of ``weight`` in the exported numbering; zeros for ids with no fairseq symbol."""
    index = torch.tensor([i if i is not None else 0 for i in order])
    out = weight[index].clone()
    out[torch.tensor([i is None for i in order])] = 0
    return out


def write_tokenizer(out_dir: str, vocab: Mapping[str, int], spm_model: str, src: str, tgt: str) -> List[str]:
    """M2M100Tokenizer files (vocab.json, sentencepiece.bpe.model, tokenizer_config.json) in ``out_dir``."""
    optional_spm(spm_model)
    tokenization = require("transformers.models.m2m_100.tokenization_m2m_100", "the tokenizer export")
    vocab_file = os.path.join(out_dir, "vocab.json")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(dict(vocab), f, ensure_ascii=False, indent=0)
    spm_file = os.path.join(out_dir, "sentencepiece.bpe.model")
    shutil.copyfile(spm_model, spm_file)
    tokenizer = tokenization.M2M100Tokenizer(vocab_file, spm_file, src_lang=src, tgt_lang=tgt, language_codes="m2m100")
    if tokenizer.get_lang_id(tgt) not in tokenizer.all_special_ids:
        # transformers 5 no longer makes the language tokens special (4.x did): register them, so that
        # decode(..., skip_special_tokens=True) drops them as fairseq does; their ids stay the same
        languages = [lang_token(code) for code in tokenization.FAIRSEQ_LANGUAGE_CODES["m2m100"]]
        tokenizer = tokenization.M2M100Tokenizer(vocab_file, spm_file, src_lang=src, tgt_lang=tgt,
                                                 language_codes="m2m100", extra_special_tokens=languages)
    return list(tokenizer.save_pretrained(out_dir))


def language_token_id(symbols: Sequence[str], code: str, flag: str) -> int:
    token = lang_token(code)
    if token not in symbols:
        raise UnsupportedForM2M100(f"{flag} {code}: no language token {token} in the model's dictionary")
    return list(symbols).index(token)


def specials_of(dictionary) -> Dict[str, int]:
    return {"bos": dictionary.bos(), "pad": dictionary.pad(), "eos": dictionary.eos(), "unk": dictionary.unk()}


def optional_spm(path: Optional[str]) -> Optional[str]:
    if path is not None and not os.path.isfile(path):
        raise LSLoFileError(f"--spm {path}: no such SentencePiece model file")
    return path
