"""Routing in generation: beam search over mixed directions, and decoder position 0."""
import torch
from fairseq.sequence_generator import SequenceGenerator

from conftest import LSLO_FLAGS, build, lang_tok, make_batch, randomize_adapters

FLAGS = LSLO_FLAGS + ["--lslo-encoder-positions", "all", "--lslo-decoder-positions", "all",
                      "--lslo-encoder-routing", "src,tgt"]


def _model(dict_dir):
    task, model = build(dict_dir, "lslo_transformer", FLAGS)
    randomize_adapters(model, seed=3, scale=0.4)
    return task, model


def _generate(task, model, directions, lengths, beam=4):
    """Beam search as fairseq-generate does it: target language token forced as prefix."""
    net_input, _ = make_batch(task, directions, lengths, [1] * len(directions), seed=11)
    del net_input["prev_output_tokens"]
    tgts = [d.split("-")[1] for d in directions]
    net_input["lslo_tgt_lang"] = model.language_ids(tgts)
    prefix = torch.tensor([[lang_tok(task, t)] for t in tgts])
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=beam, max_len_b=8)
    out = gen.generate([model], {"net_input": net_input}, prefix_tokens=prefix)
    return [[(h["tokens"].tolist(), float(h["score"])) for h in hyps] for hyps in out], net_input


def test_beam_search_mixed_batch_equals_each_direction_alone(dict_dir):
    task, model = _model(dict_dir)
    directions = ["en-fr", "de-en", "fr-de", "en-de", "de-fr", "fr-en"]
    lengths = [3, 6, 4, 2, 5, 4]
    mixed, mixed_input = _generate(task, model, directions, lengths)
    for i, direction in enumerate(directions):
        # the same source sentence, alone in its batch (no padding, one direction)
        src = mixed_input["src_tokens"][i]
        src = src[src.ne(task.source_dictionary.pad())].unsqueeze(0)
        tgt = direction.split("-")[1]
        net_input = {"src_tokens": src, "src_lengths": torch.tensor([src.numel()]),
                     "lslo_tgt_lang": model.language_ids([tgt])}
        gen = SequenceGenerator([model], task.target_dictionary, beam_size=4, max_len_b=8)
        alone = gen.generate([model], {"net_input": net_input},
                             prefix_tokens=torch.tensor([[lang_tok(task, tgt)]]))
        assert [h["tokens"].tolist() for h in alone[0]] == [t for t, _ in mixed[i]], direction
        # scores agree up to float rounding (padding changes the reduction shapes)
        torch.testing.assert_close(torch.tensor([float(h["score"]) for h in alone[0]]),
                                   torch.tensor([s for _, s in mixed[i]]), atol=1e-4, rtol=0)


def test_target_language_changes_the_hypotheses(dict_dir):
    """The check above can fail: routing a sample to another target language changes its output."""
    task, model = _model(dict_dir)
    a, _ = _generate(task, model, ["en-fr"], [5])
    b, _ = _generate(task, model, ["en-de"], [5])
    assert [t[1:] for t, _ in a[0]] != [t[1:] for t, _ in b[0]]


def test_incremental_decoding_routes_position_zero_like_training(dict_dir):
    """Step-by-step decoding (input at step 0 is only </s>) gives the training forward's log-probs."""
    task, model = _model(dict_dir)
    directions = ["en-fr", "de-en", "fr-de"]
    net_input, target = make_batch(task, directions, [3, 5, 4], [4, 4, 4], seed=5)
    with torch.no_grad():
        full = model.get_normalized_probs(model(**net_input), log_probs=True)
        enc_input = {k: v for k, v in net_input.items() if k != "prev_output_tokens"}
        enc_input["lslo_tgt_lang"] = model.language_ids([d.split("-")[1] for d in directions])
        encoder_out = model.encoder.forward_torchscript(enc_input)
        state = {}
        prev = net_input["prev_output_tokens"]
        steps = []
        for t in range(prev.size(1)):
            out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
            steps.append(model.get_normalized_probs(out, log_probs=True)[:, -1])
    incremental = torch.stack(steps, dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


def test_generation_takes_target_language_from_the_task(dict_dir):
    """fairseq-generate's path: -t on the task, nothing in net_input, prefix forced by the task."""
    task_t, model_t = build(dict_dir, "lslo_transformer", FLAGS + ["--source-lang", "en", "--target-lang", "de"])
    task, model = _model(dict_dir)
    model_t.load_state_dict(model.state_dict())
    net_input, _ = make_batch(task, ["en-de", "en-de"], [4, 6], [1, 1], seed=2)
    del net_input["prev_output_tokens"]
    gen = SequenceGenerator([model_t], task_t.target_dictionary, beam_size=4, max_len_b=8)
    via_task = task_t.inference_step(gen, [model_t], {"net_input": net_input})
    gen2 = SequenceGenerator([model], task.target_dictionary, beam_size=4, max_len_b=8)
    net_input2 = dict(net_input, lslo_tgt_lang=model.language_ids(["de", "de"]))
    direct = gen2.generate([model], {"net_input": net_input2},
                           prefix_tokens=torch.tensor([[lang_tok(task, "de")]] * 2))
    for a, b in zip(via_task, direct):
        assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]
