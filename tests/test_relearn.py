"""The relearning attack: spec, what it trains on, held-out scoring, its own section in the report and
the verdict, and on the demo world: it brings the constructed control's knowledge back, not the
retain-only model's."""

import math

import pytest

from hubaudit.attacks import TrainingRows
from hubaudit.audit import heldout_regained
from hubaudit.errors import SpecError
from hubaudit.forget import load_forget_set
from hubaudit.metrics.training import training_rows
from hubaudit.quant import get_backend, parse_specs
from hubaudit.quant.base import spec_kind
from hubaudit.results import AuditReport, CellResult


@pytest.mark.parametrize("spec, message", [
    ("relearn:steps=0", "steps must be 1 to 100000"),
    ("relearn:foo=1", "unknown argument 'foo=1'"),
    ("relearn:steps", "unknown argument 'steps'"),
    ("relearn:lr=fast", "lr=fast is not a number"),
    ("relearn:data=web", "data must be forget or retain"),
    ("relearn:frac=0", "frac must be in (0, 1]"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_specs(spec)


def test_spec_defaults_and_kinds():
    backend, spec = get_backend("relearn:steps=5:lr=1e-4")
    assert backend.kind == "training" and backend.family == "recovery" and backend.rows_request(spec).data == "forget"
    assert [str(s) for s in parse_specs("relearn,rtn:4,relearn:steps=5")] == ["relearn", "rtn:4", "relearn:steps=5"]
    assert spec_kind("relearn:steps=5") == "recovery" and spec_kind("rtn:4") == "quantization" and spec_kind("fp") == "fp"
    rtn, rtn_spec = get_backend("rtn:4")
    assert rtn.rows_request(rtn_spec) is None


def test_it_trains_on_the_first_tenth_of_each_forget_part(random_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_world["model"])
    fs = load_forget_set("synthetic")
    rows, trained = training_rows(fs, tok, "forget", 0.1)
    assert trained == {"forget_qa": math.ceil(len(fs.forget_qa) * 0.1), "verbmem": math.ceil(len(fs.verbmem) * 0.1)}
    assert len(rows) == sum(trained.values())
    first = fs.forget_qa[0]
    assert rows[0] == tok(f"Question: {first.question}\nAnswer: {first.answer}")["input_ids"] + [tok.eos_token_id]
    held_out = fs.forget_qa[trained["forget_qa"]]
    assert not any(tok.decode(r).count(held_out.question) for r in rows)  # the rest is never trained on
    rows, trained = training_rows(fs, tok, "retain", 0.1)
    assert trained == {} and len(rows) == len(fs.retain_qa) + len(fs.mia_retain)


def test_relearning_is_deterministic_and_leaves_the_source_alone(random_world):
    import torch

    from hubaudit.modeling import ModelSource

    src = ModelSource(random_world["model"], device="cpu")
    before = {k: v.clone() for k, v in src.model.state_dict().items()}
    backend, spec = get_backend("relearn:steps=3:lr=1e-3")
    req = backend.rows_request(spec)
    rows = TrainingRows(*training_rows(load_forget_set(random_world["forget"]), src.tokenizer, req.data, req.frac))
    a, settings = backend.build(src, spec, rows=rows)
    b, _ = backend.build(src, spec, rows=rows)
    assert backend.family == "recovery" and settings["trained_items"]["forget_qa"] == 2  # ceil(12 * 0.1)
    assert settings["final_loss"] < settings["first_loss"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], before[k]) for k in sa)
    assert all(torch.equal(v, before[k]) for k, v in src.model.state_dict().items())


def _cells(trained_gain, heldout_gain, n=30, k=3):
    """A full-precision cell scoring 0 everywhere, an rtn:4 cell one point up on every item, and a relearn
    cell trained on the first ``k`` items."""
    from factories import item_cell

    fp = item_cell("model", "fp", knowmem_f=[0.0] * n, knowmem_r=[50.0] * n)
    rl = item_cell("model", "relearn:steps=5", knowmem_f=[trained_gain] * k + [heldout_gain] * (n - k),
                   knowmem_r=[50.0] * n,
                   backend={"backend": "relearn", "kind": "training", "settings": {"trained_items": {"forget_qa": k}}})
    q = item_cell("model", "rtn:4", knowmem_f=[1.0] * n, knowmem_r=[50.0] * n)
    return [fp, q, rl]


def test_regained_counts_only_the_items_it_did_not_train_on():
    from hubaudit.audit import derive

    cells = _cells(trained_gain=100.0, heldout_gain=0.0)
    assert cells[2].metrics["knowmem_f"] == 10.0  # memorizing the slice alone lifts the mean by 10 points
    assert heldout_regained(cells[2], cells[0]) == {"knowmem_f": 0.0}
    derived, verdict = derive(cells, ["rtn:4", "relearn:steps=5"], 5.0, 0.5)
    assert derived["regained"]["relearn:steps=5"]["knowmem_f"] == 0.0 and verdict.label == "robust"
    # the test, too, sees only the 27 held-out items
    assert derived["changes"]["relearn:steps=5"]["knowmem_f"]["n"] == 27
    assert derived["kinds"] == {"rtn:4": "quantization", "relearn:steps=5": "recovery"}

    derived, verdict = derive(_cells(100.0, 30.0), ["rtn:4", "relearn:steps=5"], 5.0, 0.5)
    assert derived["regained"]["relearn:steps=5"]["knowmem_f"] == pytest.approx(30.0)
    assert verdict.label == "fragile" and verdict.worst_spec == "relearn:steps=5"
    assert "relearning attack" in verdict.summary and "quantization regains less: rtn:4 +1.0" in verdict.summary
    mq = derived["max_regained_by_kind"]
    assert mq["quantization"]["spec"] == "rtn:4" and mq["recovery"]["regained"] == pytest.approx(30.0)


def test_the_report_keeps_recovery_attacks_apart():
    from hubaudit.audit import derive
    from hubaudit.report import render_markdown

    cells = _cells(100.0, 30.0)
    derived, verdict = derive(cells, ["rtn:4", "relearn:steps=5"], 5.0, 0.5)
    report = AuditReport(inputs={"model": {"name": "m"}, "reference": None, "specs": ["rtn:4", "relearn:steps=5"],
                                 "forget": {"name": "f", "sizes": {"forget_qa": 10}}, "device": "cpu", "dtype": "float32"},
                         cells=cells, derived=derived, verdict=verdict)
    md = render_markdown(report)
    quant_table, _, recovery = md.partition("Recovery attacks")
    assert "| rtn:4 |" in quant_table and "relearn" not in quant_table.split("| precision |")[1]
    assert "| relearn:steps=5 |" in recovery and "| attack |" in recovery
    assert AuditReport.from_json(report.to_json()).derived["kinds"]["relearn:steps=5"] == "recovery"


@pytest.mark.slow
def test_relearning_brings_back_the_constructed_controls_knowledge(tiny_world, tmp_path):
    """The constructed control forgets in full precision by a small move of its weights; a few steps on
    a tenth of the forget QA bring back knowledge of the other nine tenths. The retain-only model never
    learned the forget facts: the same steps teach it the slice and nothing more."""
    import hubaudit

    spec = "relearn:steps=20:lr=3e-4"
    res = {}
    for name in ("constructed", "retain_only"):
        res[name] = hubaudit.audit(getattr(tiny_world, name), reference=False, forget=tiny_world.forget_dir,
                                   specs=f"rtn:4,{spec}", metrics="knowmem_f,knowmem_r", store=tmp_path / "s.sqlite",
                                   progress=False)
    c, r = res["constructed"], res["retain_only"]
    gained_c = c.derived["regained"][spec]["knowmem_f"]
    gained_r = r.derived["regained"][spec]["knowmem_f"]
    assert c.cell("model", "fp").metrics["knowmem_f"] < 5  # it did forget
    assert gained_c >= 10, gained_c  # on held-out questions
    assert gained_r < gained_c - 10, (gained_r, gained_c)
    kinds = c.derived["max_regained_by_kind"]
    assert set(kinds) == {"quantization", "recovery"} and c.verdict.label == "fragile"
    settings = c.cell("model", spec).backend["settings"]
    assert settings["trained_items"]["forget_qa"] == math.ceil(0.1 * len(load_forget_set(tiny_world.forget_dir).forget_qa))
