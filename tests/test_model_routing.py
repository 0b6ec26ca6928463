"""The LSLo model: equivalence at init, per-sample routing, isolation, gradients."""
import pytest
import torch

from conftest import LSLO_FLAGS, build, make_batch, randomize_adapters

DIRECTIONS = ["en-fr", "de-en", "fr-de", "en-de", "fr-en"]
LENGTHS, TGT_LENGTHS = [3, 6, 4, 2, 5], [4, 2, 5, 3, 6]


def logits(model, net_input):
    with torch.no_grad():
        return model(**net_input)[0]


@pytest.mark.parametrize("positions", ["fc1,fc2", "all"])
def test_outputs_equal_base_before_any_update(dict_dir, positions):
    task, base = build(dict_dir, "transformer")
    _, lslo = build(dict_dir, "lslo_transformer", LSLO_FLAGS + [
        "--lslo-encoder-positions", positions, "--lslo-decoder-positions", positions,
        "--lslo-encoder-routing", "src,tgt"])
    lslo.load_state_dict(base.state_dict())
    if positions == "all":
        # fairseq's plain attention takes PyTorch's fused path; wrapped q/k/v/out need its
        # module path, which gives the same function up to float rounding.  Compare against the
        # base model on the same path: then the outputs must be identical to the bit.
        for m in base.modules():
            if hasattr(m, "_set_skip_embed_dim_check"):
                m._set_skip_embed_dim_check()
    net_input, _ = make_batch(task, DIRECTIONS, LENGTHS, TGT_LENGTHS)
    assert torch.equal(logits(base, net_input), logits(lslo, net_input))


def test_lslo_weights_are_the_only_trainable_ones(dict_dir):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lslo_" in n for n in trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "encoder.layers.0.fc1.weight" in frozen and "encoder.embed_tokens.weight" in frozen
    # the base keys are exactly fairseq's: wrapping kept weight/bias where they were
    ranks = {"en": 2, "fr": 2, "de": 4}
    per_module = sum(ranks.values()) * (16 + 32)
    assert sum(model.get_parameter(n).numel() for n in trainable) == per_module * 4 * 2  # 4 fc layers x (fc1, fc2)


def test_changing_one_language_leaves_other_samples_bit_identical(dict_dir):
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-encoder-routing", "src,tgt"])
    randomize_adapters(model)
    net_input, _ = make_batch(task, DIRECTIONS, LENGTHS, TGT_LENGTHS)
    before = logits(model, net_input)
    de = model.lslo_spec.codes.index("de")
    with torch.no_grad():
        for m in model.lslo_modules().values():
            for bank in m.banks().values():
                r, i = bank.slot_place[de]
                getattr(bank, f"B{r}")[i].add_(1.0)
    after = logits(model, net_input)
    for row, direction in enumerate(DIRECTIONS):
        if "de" in direction.split("-"):
            assert not torch.equal(before[row], after[row]), direction
        else:
            assert torch.equal(before[row], after[row]), direction


def test_gradients_reach_only_languages_present_in_the_batch(dict_dir):
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-encoder-routing", "src,tgt"])
    randomize_adapters(model)
    model.train()
    directions = ["en-fr", "fr-en"]  # de absent on both sides
    net_input, target = make_batch(task, directions, [3, 4], [4, 3])
    out = model(**net_input)[0]
    torch.nn.functional.cross_entropy(out.transpose(1, 2), target, ignore_index=1).backward()
    codes = model.lslo_spec.codes
    for name, module in model.lslo_modules().items():
        for kind, bank in module.banks().items():
            used = {d.split("-")[0 if kind == "src" else 1] for d in directions}
            for slot, code in enumerate(codes):
                r, i = bank.slot_place[slot]
                grad = getattr(bank, f"A{r}").grad[i].abs().sum() + getattr(bank, f"B{r}").grad[i].abs().sum()
                assert (grad > 0) == (code in used), (name, kind, code)


def test_mixed_batch_equals_each_sample_alone(dict_dir):
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + [
        "--lslo-encoder-positions", "all", "--lslo-decoder-positions", "all", "--lslo-encoder-routing", "src,tgt"])
    randomize_adapters(model, scale=0.3)
    net_input, target = make_batch(task, DIRECTIONS, LENGTHS, TGT_LENGTHS)
    mixed = logits(model, net_input)
    for row, direction in enumerate(DIRECTIONS):
        alone_input, _ = make_batch(task, [direction], [LENGTHS[row]], [TGT_LENGTHS[row]])
        # the same sample: re-create it alone (same tokens, no padding)
        n_tgt = TGT_LENGTHS[row] + 2
        src = net_input["src_tokens"][row]
        src = src[src.ne(task.source_dictionary.pad())].unsqueeze(0)
        alone_input = {"src_tokens": src, "src_lengths": torch.tensor([src.numel()]),
                       "prev_output_tokens": net_input["prev_output_tokens"][row: row + 1, :n_tgt]}
        alone = logits(model, alone_input)
        torch.testing.assert_close(mixed[row, :n_tgt], alone[0], atol=1e-5, rtol=1e-5)


def test_routing_flags_route_each_layer_as_asked(dict_dir):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + [
        "--lslo-encoder-routing", "tgt,none", "--lslo-decoder-routing", "shared*1,src*1",
        "--lslo-decoder-positions", "fc1,cross_k"])
    mods = model.lslo_modules()
    assert mods["encoder.layers.0.fc1"].route == "tgt"
    assert not any(n.startswith("encoder.layers.1.") for n in mods)
    assert mods["decoder.layers.0.encoder_attn.k_proj"].route == "shared"
    assert mods["decoder.layers.1.fc1"].route == "src"
    assert "decoder.layers.1.fc2" not in mods
    shared = mods["decoder.layers.0.fc1"].lslo_shared
    assert shared.ranks == [2 + 2 + 4]  # default shared rank: sum of language ranks


def test_merge_and_unmerge_round_trip(dict_dir):
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-encoder-routing", "src,tgt"])
    randomize_adapters(model, scale=0.3)
    net_input, _ = make_batch(task, ["en-de", "en-de"], [3, 5], [4, 2])
    expected = logits(model, net_input)
    en, de = model.language_ids(["en", "de"]).tolist()
    weights = {n: m.weight.detach().clone() for n, m in model.lslo_modules().items()}
    for m in model.lslo_modules().values():
        m.merge(src=en, tgt=de)
    torch.testing.assert_close(logits(model, net_input), expected, atol=1e-5, rtol=1e-5)
    other, _ = make_batch(task, ["fr-de"], [3], [3])
    with pytest.raises(RuntimeError, match="merged"):
        logits(model, other)
    for m in model.lslo_modules().values():
        m.unmerge()
    for n, m in model.lslo_modules().items():
        torch.testing.assert_close(m.weight, weights[n], atol=1e-6, rtol=0)
