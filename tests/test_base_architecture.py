"""Architecture hyper-parameters come from the base checkpoint (fixtures in the published layout)."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks

from fairseq_lslo.testing.base_fixture import (PUBLISHED_ARGS, build_plain_model, published_args,
                                               write_published_checkpoint)
from conftest import BIN, LSLO_FLAGS, PAIRS, ROOT, make_batch, run
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.models.base_architecture import base_checkpoint_path, read_base_architecture

TASK_ARGV = ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
             "--encoder-langtok", "src", "--decoder-langtok", "--cpu", "--seed", "1"]


def parse(data: str, *extra: str, arch: str = "lslo_transformer") -> argparse.Namespace:
    """A command line with no dimension flags at all (unlike conftest.parse)."""
    lslo = LSLO_FLAGS if arch.startswith("lslo") else []
    argv = [data, *TASK_ARGV, "--arch", arch, *lslo, *extra]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


@pytest.fixture(scope="module")
def task(dict_dir):
    return tasks.setup_task(parse(dict_dir, arch="transformer"))


@pytest.fixture(scope="module")
def published(tmp_path_factory, task) -> str:
    """4 heads: neither fairseq's default (8) nor the 175M/615M archs' (16)."""
    return write_published_checkpoint(str(tmp_path_factory.mktemp("base") / "model.pt"), task)


@pytest.mark.parametrize("arch", ["lslo_transformer", "lslo_m2m100_175m", "lslo_m2m100_615m"])
def test_every_value_not_given_comes_from_the_checkpoint(dict_dir, published, arch):
    args = parse(dict_dir, "--finetune-from-model", published, arch=arch)
    stored = published_args()
    for key in ("encoder_layers", "decoder_layers", "encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim",
                "decoder_ffn_embed_dim", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_normalize_before", "decoder_normalize_before", "share_all_embeddings", "activation_fn",
                "no_scale_embedding", "layernorm_embedding", "encoder_learned_pos", "dropout", "attention_dropout"):
        assert getattr(args, key) == getattr(stored, key), key
    # flags fairseq added after the checkpoint was written: what its own arch function gives
    assert args.merge_src_tgt_embed is False and args.checkpoint_activations is False
    assert args.encoder_layerdrop == 0 and args.decoder_layerdrop == 0  # a choice of the run, not inherited


def test_without_a_base_the_archs_describe_the_published_checkpoints(dict_dir):
    for arch, dim, layers in (("lslo_m2m100_175m", 512, 6), ("lslo_m2m100_615m", 1024, 12)):
        args = parse(dict_dir, arch=arch)
        assert (args.encoder_embed_dim, args.encoder_layers) == (dim, layers)
        assert args.encoder_attention_heads == args.decoder_attention_heads == 16
        assert args.encoder_normalize_before and args.decoder_normalize_before and args.share_all_embeddings
        assert (args.activation_fn, args.dropout, args.attention_dropout) == ("relu", 0.1, 0.1)


@pytest.mark.parametrize("extra, stored, flag, given, theirs", [
    (["--encoder-attention-heads", "2"], {}, "--encoder-attention-heads", "2", "4"),
    (["--decoder-attention-heads", "8"], {}, "--decoder-attention-heads", "8", "4"),
    (["--activation-fn", "gelu"], {}, "--activation-fn", "'gelu'", "'relu'"),
    (["--no-scale-embedding"], {}, "--no-scale-embedding", "True", "False"),
    (["--layernorm-embedding"], {}, "--layernorm-embedding", "True", "False"),
    (["--encoder-learned-pos"], {}, "--encoder-learned-pos", "True", "False"),
    (["--encoder-normalize-before"], {"encoder_normalize_before": False}, "--encoder-normalize-before", "True", "False"),
    (["--encoder-embed-dim", "32"], {}, "--encoder-embed-dim", "32", "16"),
    (["--decoder-layers", "3"], {}, "--decoder-layers", "3", "2"),
])
def test_a_given_flag_that_differs_is_an_error_naming_both_values(dict_dir, task, tmp_path, extra, stored, flag,
                                                                    given, theirs):
    path = write_published_checkpoint(str(tmp_path / "model.pt"), task, published_args(**stored))
    with pytest.raises(LSLoConfigError) as e:
        parse(dict_dir, "--finetune-from-model", path, *extra)
    message = str(e.value)
    assert f"{flag}: command line {given}, checkpoint {theirs}" in message and path in message


def test_given_flags_that_match_and_dropout_rates_are_accepted(dict_dir, published):
    args = parse(dict_dir, "--finetune-from-model", published, "--encoder-attention-heads", "4",
                 "--encoder-normalize-before", "--dropout", "0.3", "--encoder-layerdrop", "0.1")
    assert (args.encoder_attention_heads, args.dropout, args.encoder_layerdrop) == (4, 0.3, 0.1)


def test_lslo_model_from_the_fixture_equals_the_plain_model_fairseq_loads(dict_dir, task, published):
    """B = 0: the LSLo model built from the checkpoint computes exactly the base model's logits."""
    plain, _ = checkpoint_utils.load_model_ensemble([published], task=task)
    plain = plain[0].eval()
    args = parse(dict_dir, "--finetune-from-model", published, arch="lslo_m2m100_175m")
    lslo = task.build_model(args)
    state = checkpoint_utils.load_checkpoint_to_cpu(published)  # as fairseq-train's --finetune-from-model
    lslo.load_state_dict(state["model"], strict=True, model_cfg=args)
    lslo.eval()
    net_input, _ = make_batch(task, ["en-fr", "de-en", "fr-de"], [5, 3, 4], [4, 6, 2])
    with torch.no_grad():
        want = plain(**net_input)[0]
        got = lslo(**net_input)[0]
    assert lslo.encoder.layers[0].self_attn.num_heads == 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # the control: the same weights in a model with other heads (what a wrong arch builds) load
    # without error and compute something else, so the comparison above can fail
    wrong = build_plain_model(published_args(heads=2), task)
    wrong.load_state_dict(state["model"], strict=True)
    with torch.no_grad():
        assert (wrong.eval()(**net_input)[0] - want).abs().max() > 1e-3


def test_generation_path_keeps_the_stored_values(task, published):
    """fairseq-generate --path: fairseq builds from the checkpoint's args; our arch must not clobber them."""
    overrides = {"arch": "lslo_m2m100_175m", "_name": "lslo_m2m100_175m", "lslo_langs": "en:high,fr:high,de:low",
                 "lslo_rank": "high:2,low:4"}
    models, _ = checkpoint_utils.load_model_ensemble([published], arg_overrides=overrides, task=task)
    model = models[0]
    assert type(model).__name__ == "LSLoTransformerModel"
    assert model.encoder.layers[0].self_attn.num_heads == 4 and model.decoder.embed_dim == 16
    assert len(model.encoder.layers) == 2


def test_newer_cfg_layout_is_read(tmp_path):
    """fairseq >= 0.10 stores cfg.model (here a Namespace, as for legacy models) and args = None."""
    stored = published_args(heads=2, dim=8, layers=1, encoder_normalize_before=False)
    stored._name = stored.arch
    path = str(tmp_path / "new.pt")
    torch.save({"args": None, "cfg": {"model": stored, "task": {"_name": "translation"}}, "model": {}}, path)
    base = read_base_architecture(path)
    assert (base["encoder_attention_heads"], base["encoder_embed_dim"], base["encoder_layers"]) == (2, 8, 1)
    assert base["encoder_normalize_before"] is False and base["decoder_normalize_before"] is True


def test_the_checkpoint_fairseq_will_load_is_the_one_read(tmp_path):
    save_dir = tmp_path / "ckpts"
    ns = argparse.Namespace(restore_file="checkpoint_last.pt", save_dir=str(save_dir), finetune_from_model="base.pt")
    assert base_checkpoint_path(ns)[0] == "base.pt"
    save_dir.mkdir()
    (save_dir / "checkpoint_last.pt").write_bytes(b"x")  # resuming: fairseq ignores --finetune-from-model
    assert base_checkpoint_path(ns)[0] == str(save_dir / "checkpoint_last.pt")
    assert base_checkpoint_path(argparse.Namespace(restore_file="checkpoint_last.pt", save_dir=str(tmp_path)))[0] is None


def test_missing_base_and_non_transformer_base_are_errors(dict_dir, task, tmp_path):
    with pytest.raises(LSLoConfigError, match="--finetune-from-model .*nope.pt: no such checkpoint file"):
        parse(dict_dir, "--finetune-from-model", str(tmp_path / "nope.pt"))
    lstm = str(tmp_path / "lstm.pt")
    torch.save({"args": argparse.Namespace(**{**PUBLISHED_ARGS, "arch": "lstm"}), "model": {}}, lstm)
    with pytest.raises(LSLoConfigError, match="'lstm'.*not a fairseq transformer"):
        parse(dict_dir, "--finetune-from-model", lstm)


def test_fairseq_train_takes_the_architecture_from_the_fixture(dict_dir, published, tmp_path):
    """The real CLI: no dimension flags, a conflicting one fails before any model is built."""
    train = [os.path.join(BIN, "fairseq-train"), dict_dir, *TASK_ARGV, "--user-dir", os.path.join(ROOT, "fairseq_lslo"),
             "--arch", "lslo_transformer", *LSLO_FLAGS, "--finetune-from-model", published,
             "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "200", "--max-update", "2",
             "--save-dir", str(tmp_path / "ckpt"), "--no-epoch-checkpoints", "--num-workers", "0", "--log-format", "simple"]
    out = run(train + ["--encoder-attention-heads", "16"], expect_ok=False)
    assert "--encoder-attention-heads: command line 16, checkpoint 4" in out
    run(train)
    saved = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "ckpt" / "checkpoint_last.pt"))
    model_cfg = saved["cfg"]["model"]
    assert (model_cfg.encoder_attention_heads, model_cfg.encoder_embed_dim, model_cfg.encoder_normalize_before) == (4, 16, True)
