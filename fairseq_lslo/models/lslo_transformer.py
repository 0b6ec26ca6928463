"""``lslo_transformer``: fairseq's TransformerModel with language-routed LSLo adapters.

The encoder/decoder layers are fairseq's own; only the linear maps named by
``--lslo-{encoder,decoder}-positions`` are replaced by :class:`LSLoLinear` wrappers that
share the original weights.  Everything that is not LSLo is frozen.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional

import torch
from torch import Tensor

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
)

from ..data_check import check_training_data
from ..errors import LSLoConfigError
from ..modules.adapter_file import load_adapters
from ..modules.keys import bank_attr, is_lslo_key, join
from ..modules.lslo_linear import INITS, SCALINGS, LSLoLinear
from ..modules.placement import DECODER_POSITIONS, ENCODER_POSITIONS, ROUTES, compact_routing
from ..modules.routing import BatchLanguages, LanguageResolver, LanguageRouter
from ..modules.spec import CONFIG_KEY, FFN_COVERAGES, PRESETS, LSLoSpec
from ..optim.training_clock import follow_task
from .architectures import ARCHITECTURES, lslo_base_architecture
from .task_check import build_resolver

logger = logging.getLogger(__name__)



class LSLoTransformerEncoder(TransformerEncoderBase):
    """Resolves each sample's languages, routes its LSLo layers, and passes the ids on."""

    lslo_languages: LanguageResolver
    lslo_router: LanguageRouter

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
        lslo_src_lang: Optional[Tensor] = None,
        lslo_tgt_lang: Optional[Tensor] = None,
    ):
        langs = self.lslo_languages.resolve(src_tokens, src_given=lslo_src_lang, tgt_given=lslo_tgt_lang)
        self.lslo_router.set(langs)
        encoder_out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        encoder_out.update(langs.to_encoder_out())
        return encoder_out

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        new = super().reorder_encoder_out(encoder_out, new_order)
        BatchLanguages.reorder_encoder_out(encoder_out, new, new_order)
        return new


class LSLoTransformerDecoder(TransformerDecoderBase):
    """Routes its LSLo layers by the languages the encoder stored in ``encoder_out``."""

    lslo_router: LanguageRouter

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        self.lslo_router.set(BatchLanguages.from_encoder_out(encoder_out))
        return super().extract_features(prev_output_tokens, encoder_out, incremental_state, **kwargs)

    def output_layer(self, features):
        """As fairseq's, with features flattened first.

        In incremental decoding the features are (batch x 1 x dim), transposed from
        (1 x batch x dim); for a frozen projection torch.matmul then does not fold them into
        one matrix product but runs one vector-matrix product per sample over the whole
        vocabulary (several times slower).  Flattening (a view, no copy) restores one GEMM.
        """
        if self.adaptive_softmax is not None:
            return super().output_layer(features)
        flat = features.reshape(-1, features.size(-1))
        return self.output_projection(flat).view(features.shape[:-1] + (-1,))


@register_model("lslo_transformer")
class LSLoTransformerModel(TransformerModel):
    """Transformer with one low-rank adapter per language in the chosen linear maps."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        group = parser  # fairseq's model-specific group (argument_default=SUPPRESS)
        group.add_argument("--lslo-langs", metavar="SPEC",
                           help="language inventory and resource groups: en:high,fr:high,wo:low, or a TSV "
                                "file with code<TAB>group (or code<TAB>flores_code<TAB>group) rows")
        group.add_argument("--lslo-rank", metavar="SPEC",
                           help="rank per resource group, e.g. high:2,medium:2,low:8, or one rank for all "
                                "(default: 2)")
        group.add_argument("--lslo-alpha", type=float, metavar="A",
                           help="LoRA scaling numerator: the adapter output is scaled by alpha/r (default: 1.0)")
        group.add_argument("--lslo-shared-rank", type=int, metavar="R",
                           help="rank of the single adapter of 'shared' layers (default: sum of the "
                                "language ranks, i.e. as many parameters as the LSLo layer)")
        group.add_argument("--lslo-encoder-positions", metavar="LIST",
                           help=f"encoder linear maps that get LSLo: subset of {','.join(ENCODER_POSITIONS)}, "
                                "'all' or 'none' (default: fc1,fc2)")
        group.add_argument("--lslo-decoder-positions", metavar="LIST",
                           help=f"decoder linear maps that get LSLo: subset of {','.join(DECODER_POSITIONS)}, "
                                "'all' or 'none' (default: fc1,fc2)")
        group.add_argument("--lslo-encoder-routing", metavar="SPEC",
                           help=f"per-layer routing of the encoder, values {'/'.join(ROUTES)} with X*N "
                                "repeats, e.g. src*9,tgt*3; 'learn' for architecture search (default: "
                                "first 3/4 of the layers src, the rest tgt)")
        group.add_argument("--lslo-decoder-routing", metavar="SPEC",
                           help="per-layer routing of the decoder, e.g. tgt*12 (default: tgt in every layer)")
        group.add_argument("--lslo-preset", choices=list(PRESETS),
                           help="parameterisation preset: 'ours' (default: full-width fc1/fc2 adapters, init "
                                "linear, scaling alpha) or 'paper' (the authors' reference implementation: "
                                "slice coverage, init rank, no scaling); the three flags below, when given, "
                                "override it")
        group.add_argument("--lslo-ffn-coverage", choices=list(FFN_COVERAGES),
                           help="fc1/fc2 adapters: 'full' covers the whole FFN width (d_model -> d_ffn, "
                                "d_ffn -> d_model); 'slice' is square (d_model -> d_model): fc1's adapter adds "
                                "to FFN hidden units [S, S + d_model), fc2's reads them (default: from --lslo-preset)")
        group.add_argument("--lslo-ffn-slice-offset", type=int, metavar="S",
                           help="first FFN hidden unit S of the slice of --lslo-ffn-coverage slice; "
                                "S + d_model must not exceed the FFN width (default: 0)")
        group.add_argument("--lslo-init", choices=list(INITS),
                           help="initialisation of A: 'linear' U(+-1/sqrt(d_in)) like a fresh nn.Linear, "
                                "'rank' U(+-1/sqrt(r)) as the reference; B = 0 either way (default: from --lslo-preset)")
        group.add_argument("--lslo-scaling", choices=list(SCALINGS),
                           help="factor of the update: 'alpha' alpha/r (LoRA), 'none' 1 as the reference "
                                "(--lslo-alpha is then unused) (default: from --lslo-preset)")
        group.add_argument("--lslo-adapters", metavar="FILE",
                           help="load adapters exported by lslo-export onto the model (LSLo flags not given "
                                "are taken from the file; flags that are given must match it). The base "
                                "weights come from --finetune-from-model / --path as usual")

    @classmethod
    def build_model(cls, args, task):
        lslo_base_architecture(args)
        spec = LSLoSpec.from_args(args, args.encoder_layers, args.decoder_layers)
        resolver = build_resolver(spec, task)  # checks languages and langtok flags before the big build
        check_training_data(task)
        model = super().build_model(args, task)
        model.install_lslo(spec, resolver)
        follow_task(task, model)  # the epoch and update number reach pruning from the task (optim/training_clock.py)
        model.lslo_adapters_pending = None
        path = getattr(args, "lslo_adapters", None)
        if path and os.path.exists(path):
            model.load_lslo_adapters(path)
        elif path:
            # e.g. resuming or generating from a checkpoint trained with --lslo-adapters after the
            # file was moved: that checkpoint carries the adapters itself.  Anything else fails
            # in load_state_dict (or here, at the first forward pass, if nothing is loaded).
            logger.warning("LSLo: --lslo-adapters %s does not exist; the checkpoint loaded next must "
                           "carry LSLo weights", path)
            model.lslo_adapters_pending = path
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return LSLoTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return LSLoTransformerDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)

    # --- LSLo installation --------------------------------------------------------------
    def install_lslo(self, spec: LSLoSpec, resolver: LanguageResolver) -> None:
        """Wrap the configured linear maps, freeze the rest, and record the configuration."""
        self.lslo_spec = spec
        router = LanguageRouter()
        self.encoder.lslo_languages = resolver
        self.encoder.lslo_router = router
        self.decoder.lslo_router = router
        for side, table in (("encoder", ENCODER_POSITIONS), ("decoder", DECODER_POSITIONS)):
            side_spec = getattr(spec, side)
            for index, (layer, route) in enumerate(zip(getattr(self, side).layers, side_spec.routing)):
                if route == "none":
                    continue
                for position in side_spec.positions:
                    parent_path, _, attr = table[position].rpartition(".")
                    parent = layer.get_submodule(parent_path) if parent_path else layer
                    base = getattr(parent, attr)
                    kinds = ["src", "tgt"] if route == "learn" else [route]
                    module = f"{side}.layers.{index}.{table[position]}"
                    banks = {k: spec.build_bank(k, base.in_features, base.out_features, position,
                                                bank=join(module, bank_attr(k))) for k in kinds}
                    banks = {k: b.to(base.weight.device) for k, b in banks.items()}
                    setattr(parent, attr, LSLoLinear(base, route, banks, router))
                    if parent_path.endswith("attn"):
                        # fairseq's fused attention path reads q/k/v/out weights directly and
                        # would bypass the adapters; its own switch selects the module path
                        parent._set_skip_embed_dim_check()
        for name, p in self.named_parameters():
            p.requires_grad = is_lslo_key(name)
        self.register_buffer(CONFIG_KEY, spec.to_tensor())
        log_parameter_counts(self)

    def load_lslo_adapters(self, path: str) -> None:
        """Copy an lslo-export file's adapters and masks into the model (configurations must match).

        A plain base checkpoint loaded afterwards (``--finetune-from-model``, ``--path``) has no
        LSLo keys and leaves them as they are; an LSLo checkpoint (e.g. resuming) replaces them.
        """
        theirs, tensors = load_adapters(path)
        diffs = self.lslo_spec.differences(theirs)
        if diffs:
            raise LSLoConfigError(
                f"--lslo-adapters {path}: the file's LSLo configuration differs from the model's "
                f"(flags vs file): " + "; ".join(diffs)
            )
        own = {k: v for k, v in self.state_dict().items() if is_lslo_key(k) and k != CONFIG_KEY}
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or extra:
            raise LSLoConfigError(
                f"--lslo-adapters {path}: tensors do not fit the model: missing {missing[:4]}, unexpected {extra[:4]}"
            )
        with torch.no_grad():
            for key, target in own.items():
                value = tensors[key]
                if value.shape != target.shape:
                    raise LSLoConfigError(
                        f"--lslo-adapters {path}: {key} has shape {tuple(value.shape)}, the model "
                        f"{tuple(target.shape)} (different model dimensions?)"
                    )
                target.copy_(value.to(target.dtype))
        logger.info("LSLo: loaded adapters from %s", path)

    def lslo_modules(self) -> Dict[str, LSLoLinear]:
        return {n: m for n, m in self.named_modules() if isinstance(m, LSLoLinear)}

    def language_ids(self, codes: List[str], device=None) -> Tensor:
        """Inventory ids for language codes, e.g. to pass ``lslo_tgt_lang`` in net_input."""
        inv = self.lslo_spec.inventory
        return torch.tensor([inv.index(c) for c in codes], dtype=torch.long, device=device)

    # --- forward ----------------------------------------------------------------------
    def forward(
        self,
        src_tokens,
        src_lengths,
        prev_output_tokens,
        return_all_hiddens: bool = True,
        features_only: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        lslo_src_lang: Optional[Tensor] = None,
        lslo_tgt_lang: Optional[Tensor] = None,
    ):
        if getattr(self, "lslo_adapters_pending", None):
            raise LSLoConfigError(f"--lslo-adapters {self.lslo_adapters_pending}: no such file")
        # in training and validation the target language is in prev_output_tokens; the
        # encoder needs it too (target-routed encoder layers)
        if lslo_tgt_lang is None:
            lslo_tgt_lang = self.encoder.lslo_languages.target_ids(src_tokens, prev_output_tokens)
        encoder_out = self.encoder(
            src_tokens,
            src_lengths=src_lengths,
            return_all_hiddens=return_all_hiddens,
            lslo_src_lang=lslo_src_lang,
            lslo_tgt_lang=lslo_tgt_lang,
        )
        return self.decoder(
            prev_output_tokens,
            encoder_out=encoder_out,
            features_only=features_only,
            alignment_layer=alignment_layer,
            alignment_heads=alignment_heads,
            src_lengths=src_lengths,
            return_all_hiddens=return_all_hiddens,
        )

    # --- loading ----------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load a plain transformer checkpoint (LSLo weights may be missing) or an LSLo one.

        A checkpoint with any LSLo key must match this model's LSLo configuration exactly;
        every base weight must be present; anything else mismatched is an error naming keys.
        """
        if CONFIG_KEY in state_dict:
            theirs = LSLoSpec.from_tensor(state_dict[CONFIG_KEY])
            diffs = self.lslo_spec.differences(theirs)
            if diffs:
                raise LSLoConfigError(
                    "the checkpoint's LSLo configuration differs from the command line (flags vs "
                    "checkpoint): " + "; ".join(diffs)
                )
            # the same configuration, possibly written by an older version (other JSON bytes)
            state_dict = dict(state_dict)
            state_dict[CONFIG_KEY] = getattr(self, CONFIG_KEY)
        has_lslo = any(is_lslo_key(k) for k in state_dict)
        pending = getattr(self, "lslo_adapters_pending", None)
        if pending and not has_lslo:
            raise LSLoConfigError(
                f"--lslo-adapters {pending}: no such file, and the checkpoint being loaded has no LSLo "
                f"weights to use instead"
            )
        self.lslo_adapters_pending = None
        result = super().load_state_dict(state_dict, strict=False, model_cfg=model_cfg, args=args)
        missing = [k for k in result.missing_keys if has_lslo or not is_lslo_key(k)]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing from the checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                parts.append(f"not in the model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
            raise RuntimeError("checkpoint does not fit the lslo_transformer model: " + "; ".join(parts))
        return result


def log_parameter_counts(model: LSLoTransformerModel) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spec = model.lslo_spec
    coverage = spec.ffn_coverage + (f"@{spec.ffn_slice_offset}" if spec.ffn_coverage == "slice" else "")
    logger.info(
        "LSLo: %s trainable parameters of %s (%.3f%%); languages %s; encoder %s; decoder %s; "
        "fc1/fc2 coverage %s, init %s, scaling %s",
        f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1),
        spec.inventory.to_spec(), _describe(spec.encoder), _describe(spec.decoder),
        coverage, spec.init, spec.scaling,
    )


def _describe(side) -> str:
    return f"positions={','.join(side.positions) or 'none'} routing={compact_routing(side.routing)}"


for _name, _fill in ARCHITECTURES.items():  # lslo_transformer, lslo_m2m100_615m, lslo_m2m100_175m
    register_model_architecture("lslo_transformer", _name)(_fill)
