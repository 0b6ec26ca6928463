"""Bad configuration ends in a clear error naming the flag; languages and placement parse as documented."""
import os

import pytest
import torch

from conftest import LSLO_FLAGS, build
from fairseq_lslo.checkpoint_io import CheckpointError, load_checkpoint
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.languages import LanguageInventory, parse_group_values, parse_ranks
from fairseq_lslo.modules.placement import compact_routing, default_routing, parse_positions, parse_routing


@pytest.mark.parametrize("extra, message", [
    (["--lslo-rank", "high:0,low:4"], r"--lslo-rank: rank of group 'high' must be a positive integer"),
    (["--lslo-rank", "high:2,mid:4"], r"--lslo-rank: unknown group 'mid'"),
    (["--lslo-rank", "high:2"], r"--lslo-rank: no value for group 'low'"),
    (["--lslo-encoder-positions", "fc1,fc3"], r"--lslo-encoder-positions: unknown position 'fc3'"),
    (["--lslo-decoder-positions", "cross_x"], r"--lslo-decoder-positions: unknown position 'cross_x'"),
    (["--lslo-encoder-routing", "src*3"], r"--lslo-encoder-routing: 'src\*3' gives 3 layers but the encoder has 2"),
    (["--lslo-decoder-routing", "tgt,sideways"], r"--lslo-decoder-routing: unknown routing 'sideways'"),
])
def test_bad_flags_name_the_flag(dict_dir, extra, message):
    with pytest.raises(LSLoConfigError, match=message):
        build(dict_dir, "lslo_transformer", LSLO_FLAGS + extra)


def test_language_of_lang_pairs_missing_from_lslo_langs(dict_dir):
    with pytest.raises(LSLoConfigError, match=r"language 'de' of --lang-pairs is not in --lslo-langs"):
        build(dict_dir, "lslo_transformer", ["--lslo-langs", "en:high,fr:high"])


@pytest.mark.parametrize("extra, routing, flag", [
    (["--decoder-langtok"], ["--lslo-encoder-routing", "src*2"], "add --encoder-langtok src"),
    (["--encoder-langtok", "src"], ["--lslo-decoder-routing", "tgt*2"], "add --decoder-langtok"),
    (["--encoder-langtok", "tgt", "--decoder-langtok"], ["--lslo-encoder-routing", "src*2"], "add --encoder-langtok src"),
])
def test_missing_langtok_flags_say_which_flag_to_add(dict_dir, extra, routing, flag):
    with pytest.raises(LSLoConfigError, match=flag):
        build(dict_dir, "lslo_transformer", LSLO_FLAGS + routing + extra, langtoks=False)


def test_langs_without_dictionary_token(tmp_path):
    from conftest import write_dicts

    data = write_dicts(str(tmp_path), langs=["en", "fr", "de"])
    with pytest.raises(LSLoConfigError, match=r"language 'xx' of --lslo-langs has no token __xx__"):
        build(data, "lslo_transformer", ["--lslo-langs", "en:high,fr:high,de:low,xx:low"])


def test_inventory_from_tsv_and_spec(tmp_path):
    tsv = tmp_path / "langs.tsv"
    tsv.write_text("# code\tflores\tgroup\nen\teng\thigh\nwo\twol\tlow\n\nfr\thigh\n")
    inv = LanguageInventory.from_spec(str(tsv))
    assert inv.codes == ["en", "wo", "fr"] and inv.groups == ["high", "low"]
    assert LanguageInventory.from_spec("en:high,wo:low").to_spec() == "en:high,wo:low"
    assert parse_ranks("high:2,low:8", inv) == [2, 8, 2]
    assert parse_ranks("4", inv) == [4, 4, 4]
    assert parse_group_values("0.5", "--x", float, ["a"]) == {"a": 0.5}
    with pytest.raises(LSLoConfigError, match="listed twice"):
        LanguageInventory.from_spec("en:high,en:low")
    with pytest.raises(LSLoConfigError, match="expected code:group"):
        LanguageInventory.from_spec("en-high")
    bad = tmp_path / "bad.tsv"
    bad.write_text("en\n")
    with pytest.raises(LSLoConfigError, match=r"bad.tsv:1: expected"):
        LanguageInventory.from_spec(str(bad))


def test_placement_parsing():
    assert parse_routing("src*9,tgt*3", 12, "encoder") == ["src"] * 9 + ["tgt"] * 3
    assert parse_routing("tgt", 4, "decoder") == ["tgt"] * 4
    assert compact_routing(["src", "src", "tgt"]) == "src*2,tgt*1"
    assert default_routing(12, "encoder") == "src*9,tgt*3" and default_routing(6, "decoder") == "tgt*6"
    assert parse_positions("all", "decoder")[-1] == "cross_out"
    assert parse_positions("none", "encoder") == []


def test_plain_checkpoint_loads_with_only_lslo_weights_missing(dict_dir):
    _, base = build(dict_dir, "transformer")
    _, lslo = build(dict_dir, "lslo_transformer", LSLO_FLAGS)
    state = base.state_dict()
    lslo.load_state_dict(state)
    assert torch.equal(lslo.encoder.layers[0].fc1.weight, state["encoder.layers.0.fc1.weight"])
    broken = dict(state)
    del broken["decoder.layers.1.fc2.bias"]
    with pytest.raises(RuntimeError, match=r"missing from the checkpoint: decoder.layers.1.fc2.bias"):
        lslo.load_state_dict(broken)
    extra = dict(state, **{"encoder.layers.0.fc9.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"not in the model: encoder.layers.0.fc9.weight"):
        lslo.load_state_dict(extra)


def test_lslo_checkpoint_with_other_configuration_is_rejected(dict_dir):
    _, a = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-encoder-routing", "src,tgt"])
    _, b = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-encoder-routing", "src,src"])
    with pytest.raises(LSLoConfigError, match=r"encoder routing: \['src', 'src'\] vs \['src', 'tgt'\]"):
        b.load_state_dict(a.state_dict())
    partial = {k: v for k, v in a.state_dict().items() if "decoder.layers.1.fc2.lslo" not in k}
    with pytest.raises(RuntimeError, match=r"missing from the checkpoint: decoder.layers.1.fc2.lslo_tgt"):
        a.load_state_dict(partial)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable torch checkpoint"):
        load_checkpoint(str(junk))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(1)}, "args": __import__("argparse").Namespace(arch="x")}, good)
    with open(good, "rb") as f:
        data = f.read()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable torch checkpoint"):
        load_checkpoint(str(tmp_path / "truncated.pt"))
    assert load_checkpoint(str(good))["args"].arch == "x"
    assert os.path.getsize(good) == len(data)
