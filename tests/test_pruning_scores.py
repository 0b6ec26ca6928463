"""What pruning removes: scores that do not depend on the factors' scales, and dead languages said aloud."""
import logging

import pytest
import torch

from fairseq_lslo.cli import stats
from fairseq_lslo.modules.lslo_linear import live_components
from fairseq_lslo.modules.pruning import PruningPlan, trainable_parameters
from fairseq_lslo.modules.routing import BatchLanguages
from fairseq_lslo.optim.training_clock import clock_of
from test_pruning import LANGS, TinyLSLo, build, find_pruner, schedule

CODES = [code for code, _ in LANGS]


def fresh_model(seed=0):
    """TinyLSLo as training starts it: A random, B exactly zero (the LoRA init)."""
    model = TinyLSLo(seed=seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and hasattr(module, "rank_buckets"):
            module.reset_parameters()
    return model


def forward(model, x, src, tgt):
    """Time-major x (T x batch x 8) through the encoder's then the decoder's fc1 -> relu -> fc2, residual."""
    model.encoder.layers[0].fc1.router.set(BatchLanguages(src, tgt))
    h = x
    for side in (model.encoder, model.decoder):
        for layer in side.layers:
            h = h + layer.fc2(torch.relu(layer.fc1(h)))
    return h


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.tensor([0, 1, 2, 0, 1, 2])
    tgt = torch.tensor([1, 2, 0, 2, 0, 1])
    return torch.randn(3, 6, 8, generator=g), src, tgt


def live_per_language(plan):
    out = {code: 0 for code in CODES}
    for bucket in plan.buckets:
        for i, owner in enumerate(bucket.owners):
            A = bucket.A.data[i] * bucket.A_mask[i]
            B = bucket.B.data[i] * bucket.B_mask[i]
            nonzero = (A != 0).any(dim=1) & (B != 0).any(dim=0)  # a kept, non-zero entry in both
            out[owner] += int((nonzero & bucket.live_components(i)).sum())
    return out


@pytest.mark.parametrize("structure", ["element", "rank"])
def test_pruning_AB_from_B_zero_keeps_every_language_alive(structure, monkeypatch):
    """The defect of issue 20: a joint magnitude threshold over A and B pruned every B (B starts at 0)."""
    torch.manual_seed(0)
    model = fresh_model()
    x, src, tgt = batch()
    with torch.no_grad():
        base_out = forward(model, x, src, tgt)
        goal = base_out + torch.randn_like(base_out)  # something the adapters can learn
    opt = build("plain", model, monkeypatch, lslo_sparsity="0.9", lslo_prune_start=2, lslo_prune_end=30,
                lslo_prune_interval=2, lr=[0.01], lslo_prune_structure=structure)
    pruner = find_pruner(opt)
    for update in range(40):
        clock_of(model).before_step(update)
        opt.zero_grad()
        loss = ((forward(model, x, src, tgt) - goal) ** 2).mean()
        opt.backward(loss)
        opt.step()
    report = pruner.last_report
    tolerance = 0.05 if structure == "rank" else 0.01  # whole components: 12 or 24 weights of 768 each
    assert report.achieved["high"] == pytest.approx(0.9, abs=tolerance)
    assert report.achieved["low"] == pytest.approx(0.9, abs=tolerance)
    live = live_per_language(pruner.plan)
    assert all(n >= 1 for n in live.values()), live
    assert not report.dead.keys() & set(CODES) or all(
        report.dead[c] < pruner.plan.dead_adapters()[c][1] for c in report.dead)
    with torch.no_grad():
        out = forward(model, x, src, tgt)
    for code_id in range(3):  # every language's samples moved away from the base output
        rows = (tgt == code_id)
        assert not torch.allclose(out[:, rows], base_out[:, rows], atol=1e-4), CODES[code_id]


def test_AB_scores_do_not_depend_on_how_the_update_is_split():
    """Scaling A by c and B by 1/c leaves the update, hence every score, unchanged."""
    model = TinyLSLo()
    plan = PruningPlan(model, schedule(factors="AB"))
    values = [t.param.data.clone() for t in plan.tensors]
    scaled = [v * (100.0 if t.factor == "A" else 0.01) for v, t in zip(values, plan.tensors)]
    for j, t in enumerate(plan.tensors):
        assert torch.allclose(plan.element_scores(values, j, 0), plan.element_scores(scaled, j, 0), rtol=1e-4)
    for b in range(len(plan.buckets)):
        assert torch.allclose(plan.component_scores(values, b, 0), plan.component_scores(scaled, b, 0), rtol=1e-4)
    # one factor alone: the reference's plain magnitude
    plan_b = PruningPlan(TinyLSLo(), schedule(factors="B"))
    v = [t.param.data for t in plan_b.tensors]
    assert torch.equal(plan_b.element_scores(v, 0, 1), v[0][1].abs())


def kill_one_layer(model, owner_code):
    """Make ``owner_code``'s B in one layer tiny so that B-only pruning takes exactly it."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if not hasattr(module, "rank_buckets"):
                continue
            for r, slots in module.bucket_slots().items():
                for row, slot in enumerate(slots):
                    if CODES[slot] != owner_code:
                        continue
                    if name == "encoder.layers.0.fc2.lslo_src":
                        getattr(module, f"B{r}")[row].mul_(1e-6)


def first_step_warnings(opt, model, caplog) -> list:
    """Take update 1 (zero gradients) and return the pruning optimizer's WARNING messages."""
    clock_of(model).before_step(0)
    for p in trainable_parameters(model):
        p.grad = torch.zeros_like(p)
    with caplog.at_level(logging.WARNING, logger="fairseq_lslo.optim.lslo_pruning"):
        opt.step()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_dead_language_is_a_warning_at_the_mask_update_and_in_lslo_stats(monkeypatch, caplog, tmp_path, capsys):
    model = TinyLSLo()  # rank structure, de at 0.99: its nearest count is every one of its 32 components
    opt = build("plain", model, monkeypatch, lslo_sparsity="high:0.1,low:0.99", lslo_prune_start=1,
                lslo_prune_end=1, lr=[0.0], lslo_prune_structure="rank")
    pruner = find_pruner(opt)
    warnings = first_step_warnings(opt, model, caplog)
    assert any("at update 1: language de carries no update any more: in every one of its 8 adapters" in w
               for w in warnings), warnings
    assert not any("language en" in w or "language fr" in w for w in warnings)
    assert pruner.plan.dead_adapters()["de"] == (8, 8)

    path = tmp_path / "checkpoint.pt"
    state = {k: v for k, v in model.state_dict().items()}
    state["lslo_config"] = model.lslo_spec.to_tensor()
    torch.save({"model": state}, path)
    assert stats.main([str(path), "--json"]) == 0
    import json

    record = json.loads(capsys.readouterr().out)
    assert record["dead_languages"] == ["de"]
    assert record["languages"]["de"]["dead_adapters"] == 8 and record["languages"]["de"]["kept_rank"] == 0
    live_en = sum(int(b.live_components(i).sum()) for b in pruner.plan.buckets for i, o in enumerate(b.owners)
                  if o == "en")
    assert 8 < live_en < 16  # rank 2 in 8 adapters; 10% pruned
    assert record["languages"]["en"]["dead_adapters"] == 0 and record["languages"]["en"]["kept_rank"] == live_en / 8
    assert {"lslo_parameters", "nonzero_parameters", "lslo_percent", "nonzero_percent", "group", "rank"} <= set(
        record["languages"]["en"])
    assert stats.main([str(path)]) == 0
    assert "WARNING: de carries no update" in capsys.readouterr().out

    # one adapter only: B-only pruning takes exactly en's tiny B of one layer
    caplog.clear()
    model = TinyLSLo()
    kill_one_layer(model, "en")
    opt = build("plain", model, monkeypatch, lslo_sparsity=f"high:{16 / 192},low:0.0", lslo_prune_start=1,
                lslo_prune_end=1, lr=[0.0], lslo_prune_factors="B")
    warnings = first_step_warnings(opt, model, caplog)
    assert warnings == ["LSLo pruning at update 1: language en carries no update any more in 1 of its 8 adapters "
                        "(all of B or all of A pruned there): encoder.layers.0.fc2.lslo_src"], warnings
    opt.step()  # the next mask update does not repeat it
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_live_components():
    A = torch.ones(1, 3, 4, dtype=torch.bool)
    B = torch.ones(1, 5, 3, dtype=torch.bool)
    A[0, 0] = False
    B[0, :, 1] = False
    assert live_components(A, B).tolist() == [[False, False, True]]
