"""Files written by the code before the layout change (tests/fixtures/legacy/) read the same today.

The fixture was written once by tests/fixtures/legacy/make_legacy.py on main at c64dd9c: a
checkpoint from the real fairseq-train (with pruning masks), its lslo-export adapter file, its
``lslo-stats --json`` record and the logits of a fixed mixed-direction batch.
"""
import json
import os

import pytest
import torch

from fairseq import checkpoint_utils

from fairseq_lslo.checkpoint_io import load_checkpoint
from fairseq_lslo.cli import stats
from fairseq_lslo.modules.adapter_file import load_adapters
from fairseq_lslo.modules.keys import is_lslo_key
from fairseq_lslo.modules.spec import CONFIG_KEY, LSLoSpec

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy")
CKPT = os.path.join(LEGACY, "checkpoint.pt")
ADAPTERS = os.path.join(LEGACY, "adapters.safetensors")


@pytest.fixture(scope="module")
def loaded():
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [CKPT], arg_overrides={"data": LEGACY, "source_lang": "en", "target_lang": "fr"})
    reference = torch.load(os.path.join(LEGACY, "reference.pt"), weights_only=True)
    return models[0].eval(), reference


def logits_of(model, batch):
    with torch.no_grad():
        return model(**batch)[0]


def test_legacy_checkpoint_gives_identical_logits(loaded):
    model, reference = loaded
    assert torch.equal(logits_of(model, reference["batch"]), reference["logits"])


def test_legacy_adapter_file_loads_the_checkpoints_adapters_and_masks(loaded):
    spec, tensors = load_adapters(ADAPTERS)
    state = load_checkpoint(CKPT)["model"]
    assert not spec.differences(LSLoSpec.from_state(state, CKPT))
    own = {k: v for k, v in state.items() if is_lslo_key(k) and k != CONFIG_KEY}
    assert sorted(tensors) == sorted(own)
    assert any(k.endswith("_mask") and not bool(v.all()) for k, v in own.items())  # really pruned
    for key, value in own.items():
        assert torch.equal(tensors[key], value), key

    model, reference = loaded
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lslo_key(name):
                p.zero_()
    assert not torch.equal(logits_of(model, reference["batch"]), reference["logits"])
    model.load_lslo_adapters(ADAPTERS)
    assert torch.equal(logits_of(model, reference["batch"]), reference["logits"])


def test_legacy_stats_json_is_unchanged(capsys):
    with open(os.path.join(LEGACY, "stats.json")) as f:
        expected = json.load(f)
    assert stats.main([CKPT, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    expected.pop("checkpoint"), record.pop("checkpoint")
    # additions are allowed (issue 20: kept rank and dead adapters); every field the old record had is unchanged
    added = {"dead_languages"}
    added_per_language = {"kept_rank", "adapters", "dead_adapters"}
    assert set(record) - set(expected) <= added
    for key, value in expected.items():
        if key != "languages":
            assert record[key] == value, key
    assert record["languages"].keys() == expected["languages"].keys()
    for code, entry in expected["languages"].items():
        assert set(record["languages"][code]) - set(entry) <= added_per_language, code
        assert {k: record["languages"][code][k] for k in entry} == entry, code
    assert record["dead_languages"] == []
