"""One-direction files know their direction: a merged checkpoint's HF export records it and refuses another."""
from __future__ import annotations

import json
import os

import pytest

from fairseq_lslo.errors import LSLoConfigError


@pytest.fixture(scope="module")
def merged_state(tiny_run, tmp_path_factory):
    from fairseq_lslo.checkpoint_io import load_checkpoint
    from fairseq_lslo.cli import merge

    path = str(tmp_path_factory.mktemp("merged") / "en-de.pt")
    assert merge.main([tiny_run.ckpt, "-s", "en", "-t", "de", "-o", path]) == 0
    return load_checkpoint(path)


def test_merged_checkpoint_names_its_direction(merged_state):
    from fairseq_lslo.deploy.merge import MERGED_KEY, merged_direction

    assert merged_direction(merged_state) == "en-de"
    assert merged_state["cfg"]["model"][MERGED_KEY] == "en-de"


def test_hf_export_records_the_direction_and_refuses_another(tiny_run, merged_state, tmp_path):
    pytest.importorskip("transformers")
    from fairseq_lslo.deploy.hf_export import export_direction

    out = str(tmp_path / "hf")
    export_direction(merged_state, tiny_run.data, out)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["lslo_direction"] == "en-de"
    for src, tgt in (("en", "fr"), ("fr", None), (None, "fr")):
        with pytest.raises(LSLoConfigError, match=r"merged for en-de .*asked for (en-fr|fr-de)"):
            export_direction(merged_state, tiny_run.data, str(tmp_path / "other"), src, tgt)
    assert not os.path.exists(tmp_path / "other")
