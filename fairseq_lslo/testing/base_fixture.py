"""Fixture checkpoints laid out like the published FLORES-101 / M2M-100 ones, with tiny dims.

The published ``flores101_mm100_{175M,615M}/model.pt`` files were written by an older fairseq:
a dict with ``args`` (an ``argparse.Namespace`` holding every flag of the training run, arch
``transformer_wmt_en_de_big`` overridden by explicit dimensions), ``model``,
``optimizer_history``, ``extra_state`` and ``last_optimizer_state``, and no ``cfg``.  Flags
added to fairseq later (``checkpoint_activations``, ``merge_src_tgt_embed``, ...) are absent.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

import torch

# the training run's flags, as an older fairseq stored them (model flags and a few others)
PUBLISHED_ARGS: Dict[str, Any] = dict(
    arch="transformer_wmt_en_de_big", task="translation_multi_simple_epoch",
    encoder_normalize_before=True, decoder_normalize_before=True,
    share_all_embeddings=True, share_decoder_input_output_embed=True,
    activation_fn="relu", dropout=0.1, attention_dropout=0.1, relu_dropout=0.0, activation_dropout=0.0,
    encoder_layerdrop=0.05, decoder_layerdrop=0.05, encoder_learned_pos=False, decoder_learned_pos=False,
    no_token_positional_embeddings=False, layernorm_embedding=False, no_scale_embedding=False,
    adaptive_input=False, adaptive_softmax_cutoff=None, adaptive_softmax_dropout=0,
    no_cross_attention=False, cross_self_attention=False, encoder_layers_to_keep=None, decoder_layers_to_keep=None,
    encoder_embed_path=None, decoder_embed_path=None, quant_noise_pq=0, quant_noise_pq_block_size=8,
    quant_noise_scalar=0, tie_adaptive_weights=False,
    max_source_positions=1024, max_target_positions=1024,
    encoder_langtok="src", decoder_langtok=True, lang_tok_style="multilingual", sampling_method="temperature",
    sampling_temperature=5.0, criterion="label_smoothed_cross_entropy", label_smoothing=0.1,
    optimizer="adam", lr=[0.0003], fp16=True, seed=2, ddp_backend="no_c10d", data="/private/home/data-bin",
)


def published_args(layers: int = 2, dim: int = 16, ffn: int = 32, heads: int = 4, **overrides) -> argparse.Namespace:
    values = dict(PUBLISHED_ARGS)
    for side in ("encoder", "decoder"):
        values.update({f"{side}_layers": layers, f"{side}_embed_dim": dim, f"{side}_ffn_embed_dim": ffn,
                       f"{side}_attention_heads": heads})
    values.update(decoder_output_dim=dim, decoder_input_dim=dim)
    values.update(overrides)
    return argparse.Namespace(**values)


def build_plain_model(args: argparse.Namespace, task, seed: int = 0):
    """The checkpoint's model as fairseq builds it from the stored args (random weights)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    full = argparse.Namespace(**vars(args))
    ARCH_CONFIG_REGISTRY[full.arch](full)
    torch.manual_seed(seed)
    model = ARCH_MODEL_REGISTRY[full.arch].build_model(full, task)
    with torch.no_grad():  # layer norms away from (1, 0), so that pre- vs post-norm matters visibly
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def write_published_checkpoint(path: str, task, args: argparse.Namespace = None, seed: int = 0) -> str:
    """torch.save a dict in the published layout: ``args`` only (no ``cfg``), random weights."""
    args = args or published_args()
    model = build_plain_model(args, task, seed)
    state = {
        "args": args,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 3.25}, "num_updates": 120000}],
        "extra_state": {"epoch": 12, "val_loss": 3.25, "train_iterator": {"epoch": 12, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return path
