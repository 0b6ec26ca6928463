"""lslo_label_smoothed_cross_entropy: fairseq's loss exactly, per-language metrics, entropy term."""
import math

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

import search_helpers as H
from fairseq_lslo.criterions.lslo_label_smoothed_cross_entropy import LSLoLabelSmoothedCrossEntropyCriterion
from fairseq_lslo.errors import LSLoConfigError

DIRECTIONS = [("en", "fr"), ("fr", "de"), ("de", "en"), ("en", "de"), ("fr", "en"), ("de", "fr")]
CRITERION = ["--criterion", "lslo_label_smoothed_cross_entropy", "--label-smoothing", "0.2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return H.make_dict_dir(str(tmp_path_factory.mktemp("dicts")))


@pytest.fixture(scope="module")
def search(data):
    """(args, task, model) of a search-mode model with trained-looking adapters and mix weights."""
    args, task, model = H.build(data, H.lslo_flags("learn*2", "tgt,learn", "fc1,fc2,q") + CRITERION)
    H.randomize_adapters(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if name.endswith("lslo_mix"):
                p.copy_(torch.randn(2, generator=g))
    model.eval()
    return args, task, model


def aggregated(criterion_cls, logging_outputs, smoothed=False):
    """The meters (unrounded ``.avg``) or the rounded values fairseq logs."""
    with metrics.aggregate(new_root=True) as agg:
        criterion_cls.reduce_metrics(logging_outputs)
    return dict(agg.get_smoothed_values()) if smoothed else {k: agg[k] for k in agg.keys()}


@pytest.mark.parametrize("options", [
    dict(sentence_avg=False, label_smoothing=0.2),
    dict(sentence_avg=True, label_smoothing=0.1, ignore_prefix_size=1, report_accuracy=True),
    dict(sentence_avg=False, label_smoothing=0.0),
], ids=["tokens", "sentences-prefix-accuracy", "no-smoothing"])
def test_same_loss_as_fairseq_with_extras_off(search, options):
    _, task, model = search
    sample = H.make_sample(task, DIRECTIONS)
    ours = LSLoLabelSmoothedCrossEntropyCriterion(task, **options)
    theirs = LabelSmoothedCrossEntropyCriterion(task, **options)
    loss, size, log = ours(model, sample)
    ref_loss, ref_size, ref_log = theirs(model, sample)
    assert torch.equal(loss, ref_loss)  # bit for bit
    assert size == ref_size
    for key, value in ref_log.items():
        assert torch.equal(torch.as_tensor(log[key]), torch.as_tensor(value)), key
    ours_metrics = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [log], smoothed=True)
    theirs_metrics = aggregated(LabelSmoothedCrossEntropyCriterion, [ref_log], smoothed=True)
    assert {k: ours_metrics[k] for k in theirs_metrics} == theirs_metrics


def test_per_language_losses_weighted_by_tokens_add_up(search):
    args, task, model = search
    criterion = task.build_criterion(args)
    assert isinstance(criterion, LSLoLabelSmoothedCrossEntropyCriterion)
    # two "workers": the second batch has no German target
    logs = [criterion(model, H.make_sample(task, DIRECTIONS, seed=1))[2],
            criterion(model, H.make_sample(task, [("en", "fr"), ("de", "en"), ("de", "fr")], seed=2))[2]]
    summed = {k: sum(log[k] for log in logs) for k in logs[0]}  # what fairseq's all-reduce does
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [summed])
    ntok = {c: sum(log[f"lslo_lang:{c}:ntokens"] for log in logs) for c in H.LANGS}
    assert sum(ntok.values()) == summed["ntokens"]
    total = float(m["loss"].avg) * summed["ntokens"]
    assert sum(m[f"loss/{c}"].avg * ntok[c] for c in H.LANGS) == pytest.approx(total, rel=1e-5)
    total_nll = float(m["nll_loss"].avg) * summed["ntokens"]
    assert sum(m[f"nll_loss/{c}"].avg * ntok[c] for c in H.LANGS) == pytest.approx(total_nll, rel=1e-5)
    groups = {"high": ntok["en"] + ntok["fr"], "low": ntok["de"]}
    assert sum(m[f"loss/group_{g}"].avg * n for g, n in groups.items()) == pytest.approx(total, rel=1e-5)
    # one language's value is its own: German only from the batch where it is the target
    de_first = logs[0]["lslo_lang:de:loss"] / logs[0]["lslo_lang:de:ntokens"] / math.log(2)
    assert m["loss/de"].avg == pytest.approx(de_first, rel=1e-5)
    assert logs[1]["lslo_lang:de:ntokens"] == 0
    assert m["loss/en"].avg != pytest.approx(m["loss/fr"].avg, rel=1e-3)  # really per language


def test_absent_language_gets_no_value(search):
    _, task, model = search
    crit = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2)
    log = crit(model, H.make_sample(task, [("en", "fr"), ("de", "fr")]))[2]
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [log])
    assert "loss/fr" in m and "loss/de" not in m and "loss/en" not in m
    assert "loss/group_high" in m and "loss/group_low" not in m


def expected_entropy(model):
    values = []
    for name, p in model.named_parameters():
        if name.endswith("lslo_mix"):
            w = torch.softmax(p.detach().double(), 0)
            values.append(float(-(w * w.log()).sum()))
    assert len(values) == 2 * 3 + 1 * 3  # 3 searched layers x 3 positions
    return sum(values) / len(values)


def test_entropy_regulariser_adds_weight_times_mean_entropy_per_token(search):
    _, task, model = search
    sample = H.make_sample(task, DIRECTIONS)
    plain = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2)
    reg = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2, lslo_routing_entropy_weight=0.3)
    loss0, size, log0 = plain(model, sample)
    loss1, _, log1 = reg(model, sample)
    h = expected_entropy(model)
    assert float(loss1 - loss0) == pytest.approx(0.3 * h * size, rel=1e-5)
    assert log0["lslo_entropy_sum"] == pytest.approx(h, rel=1e-6) == log1["lslo_entropy_sum"]
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [log1])
    assert m["routing_entropy"].avg == pytest.approx(h, rel=1e-6)

    # sign: a gradient step on the loss lowers the entropy (pushes towards a hard choice)
    model.zero_grad()
    loss_term = loss1 - loss0.detach()
    loss_term.backward()
    with torch.no_grad():
        saved = {n: p.clone() for n, p in model.named_parameters() if n.endswith("lslo_mix")}
        for n, p in model.named_parameters():
            if n in saved:
                p -= 0.01 * p.grad
        h_after = expected_entropy(model)
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    model.zero_grad()
    assert h_after < h


def test_mixing_weights_logged_per_layer_and_position(search):
    _, task, model = search
    sample = H.make_sample(task, DIRECTIONS)
    w_tgt = {n: float(torch.softmax(p.detach(), 0)[1]) for n, p in model.named_parameters() if n.endswith("lslo_mix")}
    per_layer = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2)
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [per_layer(model, sample)[2]] * 3)
    enc1 = [w_tgt[f"encoder.layers.0.{p}.lslo_mix"] for p in ("fc1", "fc2", "self_attn.q_proj")]
    assert m["mix_tgt/enc01"].avg == pytest.approx(sum(enc1) / 3, abs=1e-6)
    assert m["mix_tgt/dec02"].avg == pytest.approx(
        sum(w_tgt[f"decoder.layers.1.{p}.lslo_mix"] for p in ("fc1", "fc2", "self_attn.q_proj")) / 3, abs=1e-6)
    assert "mix_tgt/dec01" not in m  # decoder layer 1 is hard-routed (tgt)
    per_position = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2, lslo_log_mix="position")
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [per_position(model, sample)[2]])
    assert m["mix_tgt/enc01.q"].avg == pytest.approx(w_tgt["encoder.layers.0.self_attn.q_proj.lslo_mix"], abs=1e-6)


def test_plain_transformer_gets_per_language_losses(data):
    args, task, model = H.build(data, CRITERION, arch="transformer")
    model.eval()
    criterion = task.build_criterion(args)
    log = criterion(model, H.make_sample(task, DIRECTIONS))[2]
    m = aggregated(LSLoLabelSmoothedCrossEntropyCriterion, [log])
    assert {"loss/en", "loss/fr", "loss/de", "nll_loss/de"} <= set(m)
    assert not [k for k in m if k.startswith("loss/group_") or k.startswith("mix_tgt/")]


def test_entropy_weight_without_search_mode_is_an_error(data):
    _, task, model = H.build(data, H.lslo_flags("src", "tgt"))
    crit = LSLoLabelSmoothedCrossEntropyCriterion(task, False, 0.2, lslo_routing_entropy_weight=0.1)
    with pytest.raises(LSLoConfigError, match="--lslo-routing-entropy-weight"):
        crit(model, H.make_sample(task, DIRECTIONS))


def test_unknown_target_language_is_a_clear_error(data):
    from fairseq import options, tasks

    argv = [data, "--user-dir", H.USER_DIR, "--task", "translation_multi_simple_epoch", "--lang-pairs", H.PAIRS,
            "--encoder-langtok", "src", "--arch", "transformer", "--cpu", *H.TINY, *CRITERION]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    with pytest.raises(LSLoConfigError, match="--decoder-langtok"):
        task.build_criterion(args)(model, H.make_sample(task, DIRECTIONS))
