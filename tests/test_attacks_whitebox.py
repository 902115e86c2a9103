"""The white-box attacks: ``ablate:direction`` (the direction separating the model from its original, folded
out of the weights) and ``probe:logit-lens`` (the model cut at one layer, read through its final norm and
lm_head). Specs, the reference they need, what the fold does to the residual stream, a constructed model
whose "unlearning" is a shift along one direction, and the lens at the last layer."""

import pytest

from hubaudit.attacks import TrainingRows, get_attack, parse_specs, spec_kind
from hubaudit.errors import SpecError
from hubaudit.forget import load_forget_set
from hubaudit.metrics.training import training_rows


def _esc(s: str) -> str:
    return "".join("\\" + c if c in "()[]+.*?" else c for c in s)


@pytest.mark.parametrize("spec, message", [
    ("ablate", "use ablate:direction"),
    ("ablate:mean", "use ablate:direction"),
    ("ablate:direction:x", "'x' is not a number"),
    ("ablate:direction:-1", "0-based decoder layer"),
    ("ablate:direction:1:2", "one layer at most"),
    ("ablate:direction:frac=0", "frac must be in (0, 1]"),
    ("ablate:direction:seed=1", "unknown option 'seed=1'"),
    ("probe", "use probe:logit-lens"),
    ("probe:linear", "use probe:logit-lens"),
    ("probe:logit-lens:frac=2", "frac must be in (0, 1]"),
    ("probe:logit-lens:top", "'top' is not a number"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(SpecError, match=_esc(message)):
        parse_specs(spec)


def test_kinds_and_what_they_ask_for():
    ablate, spec = get_attack("ablate:direction:1:frac=0.2")
    probe, pspec = get_attack("probe:logit-lens")
    assert ablate.kind == probe.kind == "white-box" and ablate.family == probe.family == "recovery"
    assert spec_kind("ablate:direction") == spec_kind("probe:logit-lens") == "recovery"
    assert ablate.needs_reference and not probe.needs_reference
    req = ablate.rows_request(spec)
    assert (req.data, req.frac, req.answers) == ("forget", 0.2, True)
    assert probe.rows_request(pspec).answers


def test_held_out_rows_mark_the_answer(random_world):
    """With ``answers`` every row is (ids, start): the same ids as the training row, the prompt before start."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_world["model"])
    fs = load_forget_set(random_world["forget"])
    plain, trained = training_rows(fs, tok, "forget", 0.1)
    pairs, trained2 = training_rows(fs, tok, "forget", 0.1, answers=True)
    assert trained == trained2 and [ids for ids, _ in pairs] == plain
    ids, start = pairs[0]
    assert tok.decode(ids[:start]).endswith("Answer:") and fs.forget_qa[0].answer in tok.decode(ids[start:])


def test_ablation_without_a_reference_is_refused_before_any_work(random_world, tmp_path, capsys):
    import hubaudit
    from hubaudit.cli import main

    with pytest.raises(SpecError, match="pass --reference"):
        hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs="ablate:direction",
                       store=False, progress=False)
    code = main(["audit", str(random_world["model"]), "--no-reference", "--forget", str(random_world["forget"]),
                 "--backends", "ablate:direction", "--no-store", "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --reference" in err[0], err
    with pytest.raises(SpecError, match="has 2 decoder layers"):
        hubaudit.audit(random_world["model"], reference=random_world["reference"], forget=random_world["forget"],
                       specs="ablate:direction:5", store=False, progress=False)


def _rows(src, spec, forget):
    attack, spec = get_attack(spec)
    req = attack.rows_request(spec)
    rows, trained = training_rows(load_forget_set(forget), src.tokenizer, req.data, req.frac, answers=req.answers)
    return attack, spec, TrainingRows(rows, trained)


def test_folding_removes_the_direction_and_leaves_the_source_alone(random_world):
    import torch

    from hubaudit.attacks.residual import layer_means
    from hubaudit.modeling import ModelSource

    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    ref = ModelSource(random_world["reference"], device="cpu", dtype="float32")
    before = {k: v.clone() for k, v in src.model.state_dict().items()}
    attack, spec, rows = _rows(src, "ablate:direction:0", random_world["forget"])
    model, settings = attack.build(src, spec, rows=rows, reference=ref)
    assert model is not src.model and settings["layer"] == 0 and settings["mode"] == "folded"
    assert settings["matrices_folded"] == 1 + 2 * 2  # embeddings, o_proj and down_proj of both layers
    assert all(torch.equal(v, before[k]) for k, v in src.model.state_dict().items())
    pad = src.tokenizer.pad_token_id
    diff = layer_means(src.model, rows.rows, pad)[0] - layer_means(ref.model, rows.rows, pad)[0]
    d = diff[0] / diff[0].norm()
    ids = torch.tensor([src.tokenizer("the river city of Varnholt was founded in 1821").input_ids])
    with torch.no_grad():
        hs_src = src.model(input_ids=ids, output_hidden_states=True).hidden_states
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for h_src, h in zip(hs_src[:-1], hs[:-1]):  # every residual stream but the last (after the final norm)
        share = ((h @ d).abs() / h.norm(dim=-1)).max()
        assert share < 1e-4, share
    assert max(float(((h @ d).abs() / h.norm(dim=-1)).mean()) for h in hs_src[:-1]) > 1e-2  # it held some before
    assert settings["projection_share_after"] < 1e-4 < settings["projection_share_before"]


def test_a_fold_that_misses_a_writer_falls_back_to_hooks(random_world, monkeypatch):
    """An architecture whose sublayers write to the residual stream through modules the fold does not know
    (here: none known but the embeddings) keeps the direction after folding; the attack sees it and
    projects the direction out at run time instead."""
    import torch

    from hubaudit.attacks import residual
    from hubaudit.modeling import ModelSource

    monkeypatch.setattr(residual, "WRITERS", ())
    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    ref = ModelSource(random_world["reference"], device="cpu", dtype="float32")
    attack, spec, rows = _rows(src, "ablate:direction:1", random_world["forget"])
    model, settings = attack.build(src, spec, rows=rows, reference=ref)
    assert settings["mode"] == "hooks" and settings["matrices_folded"] == 1
    assert settings["projection_share_after"] > 1e-3
    pad = src.tokenizer.pad_token_id
    diff = residual.layer_means(src.model, rows.rows, pad)[0] - residual.layer_means(ref.model, rows.rows, pad)[0]
    d = diff[1] / diff[1].norm()
    assert residual.projection_share(model, d, rows.rows, pad) < 1e-5
    ids = torch.tensor([src.tokenizer("the river city").input_ids])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, src.model(input_ids=ids).logits)


def test_the_originals_own_cell_is_its_full_precision_cell(random_world, tmp_path):
    import hubaudit

    rep = hubaudit.audit(random_world["model"], reference=random_world["reference"], forget=random_world["forget"],
                         specs="ablate:direction:1", metrics="knowmem_f", store=tmp_path / "s.sqlite", progress=False)
    ref_cell, ref_fp = rep.cell("reference", "ablate:direction:1"), rep.cell("reference", "fp")
    assert ref_cell.backend["settings"]["identical_to_full_precision"]
    assert ref_cell.metrics == ref_fp.metrics
    model_cell = rep.cell("model", "ablate:direction:1")
    assert model_cell.status == "ok" and model_cell.backend["settings"]["layer"] == 1


def test_the_stored_result_is_keyed_on_the_original(random_world, tmp_path):
    from hubaudit.metrics import MetricConfig, resolve_metrics
    from hubaudit.modeling import ModelSource
    from hubaudit.plan import metric_key

    fs = load_forget_set(random_world["forget"])
    m = resolve_metrics("knowmem_f", fs)[0]
    src, ref = ModelSource(random_world["model"], device="cpu"), ModelSource(random_world["reference"], device="cpu")
    spec = get_attack("ablate:direction")[1]
    assert metric_key(m, MetricConfig(), src, spec, ref) != metric_key(m, MetricConfig(), src, spec, src)
    rtn = get_attack("rtn:4")[1]
    assert metric_key(m, MetricConfig(), src, rtn, ref) == metric_key(m, MetricConfig(), src, rtn, src)


def test_logit_lens_at_the_last_layer_is_the_model_and_below_it_reads_the_layer(random_world):
    import torch

    from hubaudit.attacks.probe import truncate
    from hubaudit.attacks.residual import answer_loss, lens_losses
    from hubaudit.modeling import ModelSource

    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    attack, spec, rows = _rows(src, "probe:logit-lens:1", random_world["forget"])
    model, settings = attack.build(src, spec, rows=rows)
    assert model is src.model and settings["identical_to_full_precision"]
    pad = src.tokenizer.pad_token_id
    losses = lens_losses(src.model, rows.rows, pad)
    assert losses[-1] == pytest.approx(answer_loss(src.model, rows.rows, pad), rel=1e-5)
    whole = truncate(src.fresh_copy(), 2)
    ids = torch.tensor([src.tokenizer("Question: who founded Varnholt?\nAnswer:").input_ids])
    with torch.no_grad():
        assert torch.allclose(whole(input_ids=ids).logits, src.model(input_ids=ids).logits, atol=1e-5)
        lens, lspec, _ = _rows(src, "probe:logit-lens:0", random_world["forget"])
        cut, s = lens.build(src, lspec, rows=rows)
        assert s["layers_removed"] == 1 and cut.config.num_hidden_layers == 1 and len(src.model.model.layers) == 2
        h1 = src.model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # the output of layer 0
        expect = src.model.lm_head(src.model.model.norm(h1))
        assert torch.allclose(cut(input_ids=ids).logits, expect, atol=1e-5)
        out = cut.generate(ids, max_new_tokens=4, do_sample=False)  # with its own KV cache
        assert out.shape[1] == ids.shape[1] + 4


@pytest.fixture(scope="module")
def shifted(tiny_world, tmp_path_factory):
    """The demo target made to "forget" by a shift along one direction: a bias on layer 0's ``down_proj``
    (three times the residual stream's typical norm) pushes every token's residual stream along one random
    vector from layer 0 on. Nothing else changes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("shifted")
    cfg = AutoConfig.from_pretrained(tiny_world.target)
    cfg.mlp_bias = True
    model = AutoModelForCausalLM.from_pretrained(tiny_world.target, config=cfg, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_world.target)
    ids = torch.tensor([tok("Question: who founded the city?\nAnswer: a glassmaker").input_ids])
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.bias.zero_()
        scale = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, 1:].norm(dim=-1).mean()
        v = torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(0))
        model.model.layers[0].mlp.down_proj.bias.copy_(v / v.norm() * scale * 3)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_ablation_recovers_a_shift_along_one_direction(tiny_world, shifted, tmp_path):
    """The shifted model scores near zero; ablating the direction that separates it from the target brings
    the target's knowledge back on the forget items that did not find the direction."""
    import hubaudit

    rep = hubaudit.audit(shifted, reference=tiny_world.target, forget=tiny_world.forget_dir,
                         specs="ablate:direction", metrics="knowmem_f,verbmem_f", store=tmp_path / "s.sqlite",
                         progress=False)
    fp, target = rep.cell("model", "fp").metrics, rep.cell("reference", "fp").metrics
    assert fp["knowmem_f"] < target["knowmem_f"] - 30 and fp["verbmem_f"] < target["verbmem_f"] - 30  # it forgot
    regained = rep.derived["regained"]["ablate:direction"]
    assert regained["knowmem_f"] >= 30 and regained["verbmem_f"] >= 30, regained
    settings = rep.cell("model", "ablate:direction").backend["settings"]
    assert settings["held_out_loss_after"] < settings["held_out_loss_before"]
    assert rep.verdict.label == "fragile"


def test_a_sweep_ablates_each_model_against_its_own_reference(random_world, tmp_path):
    """A sweep runs ``ablate:direction`` with each line's reference, as ``hubaudit audit --reference`` does (one
    model against two originals: two cells, two reports), and a line without a reference is an error row that
    says what to pass."""
    import hubaudit
    from hubaudit.sweep import SweepEntry, sweep

    from factories import make_random_model

    m, ref, fs = str(random_world["model"]), str(random_world["reference"]), str(random_world["forget"])
    ref2 = str(make_random_model(tmp_path / "ref2", seed=7, dtype="bfloat16"))
    kw = dict(forget=fs, specs="rtn:4,ablate:direction", metrics="knowmem_f", progress=False)
    res = sweep([SweepEntry(m, ref), SweepEntry(m, ref2), SweepEntry(m, "none")], out=tmp_path / "out",
                store=tmp_path / "s.sqlite", use_ray=False, **kw)
    assert [r.status for r in res.rows[:2]] == ["ok", "ok"], [r.reason for r in res.rows]
    assert res.rows[2].status == "error" and "ablate:direction compares the model with its original" in res.rows[2].reason
    cells = []
    for row, original in zip(res.rows, (ref, ref2)):
        one = hubaudit.audit(m, reference=original, store=tmp_path / "one.sqlite", **kw)
        got = row.report.cell("model", "ablate:direction")
        assert got.status == "ok" and got.items == one.cell("model", "ablate:direction").items
        assert row.report.derived["changes"] == one.derived["changes"]
        assert row.report.cell("reference", "ablate:direction").items == one.cell("reference", "ablate:direction").items
        cells.append(got.backend["settings"])
    assert cells[0] != cells[1]  # two originals, two directions


def test_folding_unties_a_tied_lm_head_and_keeps_the_read_out():
    """SmolLM2-style tied embeddings: the fold changes the embedding rows but not lm_head, which reads the
    residual stream and must keep reading it as before."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hubaudit.attacks.residual import fold_out

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    head = model.lm_head.weight.detach().clone()
    d = torch.randn(32)
    d /= d.norm()
    assert fold_out(model, d) == 1 + 2 * 2
    assert model.lm_head.weight is not model.model.embed_tokens.weight and torch.equal(model.lm_head.weight, head)
    assert (model.model.embed_tokens.weight @ d).abs().max() < 1e-5
    assert not model.config.tie_word_embeddings
