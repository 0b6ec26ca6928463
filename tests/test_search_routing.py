"""Search mode (routing ``learn``): flags, forced weights vs hard routing, and lslo-arch round trips."""
import json
import os

import pytest
import torch

import search_helpers as H
from fairseq_lslo.checkpoint_io import atomic_torch_save
from fairseq_lslo.cli import arch
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.modules.lslo_linear import LSLoLinear
from fairseq_lslo.modules.search import choose_routing, mix_logits_from_state, parse_site

BIG = 1e4  # softmax((BIG, -BIG)) is exactly (1.0, 0.0) in float32: exp(-2e4) underflows to 0
DIRECTIONS = [("en", "fr"), ("fr", "de"), ("de", "en"), ("en", "de"), ("fr", "en")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return H.make_dict_dir(str(tmp_path_factory.mktemp("dicts")))


def set_mix(model, routes):
    """Force every searched position of layer i of each side to ``routes[side][i]`` (src or tgt)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LSLoLinear) and module.route == "learn":
                site = parse_site(name)
                side_route = routes[site.side][site.layer]
                module.lslo_mix.copy_(torch.tensor([BIG, -BIG] if side_route == "src" else [-BIG, BIG]))


def routes_by_layer(model):
    out = {"encoder": {}, "decoder": {}}
    for name, module in model.lslo_modules().items():
        site = parse_site(name)
        out[site.side].setdefault(site.layer, set()).add(module.route)
    return {side: [sorted(v) for _, v in sorted(d.items())] for side, d in out.items()}


def test_learn_flags_build_both_banks_and_a_trainable_mix(data):
    _, _, model = H.build(data, H.lslo_flags("src,learn", "learn*2", "fc1,q"))
    assert model.lslo_spec.encoder.routing == ["src", "learn"]
    assert model.lslo_spec.decoder.routing == ["learn", "learn"]
    fc1 = model.encoder.layers[1].fc1
    assert fc1.route == "learn" and set(fc1.banks()) == {"src", "tgt"}
    assert not hasattr(model.encoder.layers[0].fc1, "lslo_mix")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.layers.1.fc1.lslo_mix" in trainable
    assert "decoder.layers.0.self_attn.q_proj.lslo_mix" in trainable
    assert all("lslo_" in n for n in trainable)


def test_learn_needs_both_language_tokens(data):
    from fairseq import options, tasks

    args_without_decoder_langtok = H.lslo_flags("learn", "tgt")

    argv = [data, "--user-dir", H.USER_DIR, "--task", "translation_multi_simple_epoch", "--lang-pairs", H.PAIRS,
            "--encoder-langtok", "src", "--arch", "lslo_transformer", "--cpu", *H.TINY, *args_without_decoder_langtok]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    with pytest.raises(LSLoConfigError, match="--decoder-langtok"):
        task.build_model(args)


@pytest.mark.parametrize("directions", [DIRECTIONS, [("en", "fr")] * 3], ids=["mixed-batch", "uniform-batch"])
def test_forced_mix_equals_hard_routing(data, directions):
    """With one side's weight forced to 1 the search model computes exactly the hard-routed model.

    Exact (torch.equal), not approximate: softmax((1e4, -1e4)) is exactly (1, 0) in float32, so
    the search layer adds 1.0 * delta_chosen + 0.0 * delta_other, which in IEEE arithmetic is
    bit-identical to adding delta_chosen alone, and both models run the same kernels.
    """
    routes = {"encoder": ["src", "tgt"], "decoder": ["tgt", "src"]}
    _, task, search = H.build(data, H.lslo_flags("learn*2", "learn*2", "all"))
    H.randomize_adapters(search)
    set_mix(search, routes)
    _, _, hard = H.build(data, H.lslo_flags("src,tgt", "tgt,src", "all"), seed=123)
    theirs = search.state_dict()
    ours = hard.state_dict()
    hard.load_state_dict({k: (v if k == "lslo_config" else theirs[k]) for k, v in ours.items()})
    search.eval(), hard.eval()
    sample = H.make_sample(task, directions)
    with torch.no_grad():
        out_search = search(**sample["net_input"])[0]
        out_hard = hard(**sample["net_input"])[0]
        set_mix(search, {"encoder": ["tgt", "src"], "decoder": ["tgt", "src"]})
        out_other = search(**sample["net_input"])[0]
    assert torch.equal(out_search, out_hard)
    assert not torch.allclose(out_other, out_hard)  # the adapters matter: the test can fail


def save_search_checkpoint(data, path, logits):
    """A fairseq-style checkpoint of a search model whose mix logits are ``logits[side][layer]``."""
    args, _, model = H.build(data, H.lslo_flags("learn*2", "learn,tgt", "fc1,fc2,v"))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LSLoLinear) and module.route == "learn":
                site = parse_site(name)
                module.lslo_mix.copy_(torch.tensor(logits[site.side][site.layer][site.position]))
    atomic_torch_save({"model": model.state_dict(), "args": args}, path)
    return model


# encoder layer 1: two positions lean src, one leans tgt strongly -> mean w_tgt decides
LOGITS = {
    "encoder": [
        {"fc1": [2.0, 0.0], "fc2": [1.0, 0.0], "v": [0.0, 2.5]},  # w_tgt .119, .269, .924 -> mean .437: src
        {"fc1": [0.0, 1.0], "fc2": [0.0, 0.5], "v": [0.3, 0.0]},  # .731, .622, .426 -> .593: tgt
    ],
    "decoder": [{"fc1": [1.0, 0.0], "fc2": [1.0, 0.0], "v": [1.0, 0.0]}],  # layer 2 is tgt (not searched)
}


def test_lslo_arch_flags_pasted_back_build_the_chosen_routing(data, tmp_path, capsys):
    ck = str(tmp_path / "search.pt")
    save_search_checkpoint(data, ck, LOGITS)
    plot = tmp_path / "plots" / "arch.png"
    assert arch.main([ck, "--json", "--plot", str(plot)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "lslo-arch/1"
    assert doc["encoder"]["routing"] == "src*1,tgt*1"
    assert doc["decoder"]["routing"] == "src*1,tgt*1"
    layer1 = doc["encoder"]["layers"][0]
    assert layer1["mean_tgt"] == pytest.approx((0.119203 + 0.268941 + 0.924142) / 3, abs=1e-5)
    assert layer1["weights"]["v"]["tgt"] == pytest.approx(0.924142, abs=1e-5)
    assert not layer1["unanimous"]
    assert doc["decoder"]["layers"][1] == {"layer": 2, "configured": "tgt", "weights": {}, "mean_tgt": None,
                                           "route": "tgt", "unanimous": True}
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(plot.parent) if p.startswith(".tmp-")]

    # paste the flags into a hard-routed run: the model's routing is the one chosen
    flags = H.lslo_flags("unused", "unused")
    base = flags[: flags.index("--lslo-encoder-routing")]  # languages and ranks only
    _, _, hard = H.build(data, base + doc["flags"])
    assert hard.lslo_spec.encoder.routing == ["src", "tgt"]
    assert hard.lslo_spec.decoder.routing == ["src", "tgt"]
    assert hard.lslo_spec.encoder.positions == ["fc1", "fc2", "v"]
    assert routes_by_layer(hard) == {"encoder": [["src"], ["tgt"]], "decoder": [["src"], ["tgt"]]}

    # the text form prints the same flags on one line
    assert arch.main([ck]) == 0
    text = capsys.readouterr().out
    assert doc["command_line"] in text.splitlines()[-1]
    assert "(positions disagree)" in text and "(not searched)" in text


def test_choose_routing_rule_ties_go_to_src():
    state = {"encoder.layers.0.fc1.lslo_mix": torch.zeros(2), "encoder.layers.1.fc1.lslo_mix": torch.tensor([0.0, 1e-3])}
    choices = choose_routing(["learn", "learn", "none"], mix_logits_from_state(state), "encoder")
    assert [c.route for c in choices] == ["src", "tgt", "none"]


def test_lslo_arch_errors_name_the_file(data, tmp_path, capsys):
    assert arch.main([str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
    plain = str(tmp_path / "plain.pt")
    torch.save({"model": {"encoder.layers.0.fc1.weight": torch.zeros(2, 2)}}, plain)
    assert arch.main([plain]) == 2
    assert "not an LSLo checkpoint" in capsys.readouterr().err
    assert arch.main([plain, "--plot", str(tmp_path / "x.jpg")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "x.jpg").exists()
