"""One request, one plan: ``audit`` and ``sweep`` build their cells through :mod:`hubaudit.plan`.

A sweep with a published build (``file:``, a GGUF written from the model) evaluates that artifact on the audited
model only, never on its original, and its row's verdict counts it; a requested cell that fails never leaves the
label at ``robust`` (audit, sweep row, leaderboard); an audit and a sweep of the same request produce the same
cells and the same verdict."""

import pytest

from factories import make_forget_dir, make_random_model

pytestmark = pytest.mark.slow  # sweeps and audits of tiny models, a GGUF loaded through transformers (seconds)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from hubaudit.modeling import ModelSource
    from hubaudit.quant.gguf_backend import write_gguf

    root = tmp_path_factory.mktemp("pipeline")
    model = make_random_model(root / "model", seed=4, hidden=256)
    src = ModelSource(model, device="cpu")
    gguf = root / "tiny.Q8_0.gguf"
    write_gguf(src.model, src.tokenizer, gguf, "Q8_0")
    other = make_random_model(root / "m3", seed=5, hidden=256, layers=3)  # another model: its build is not ours
    osrc = ModelSource(other, device="cpu")
    wrong = root / "other.Q8_0.gguf"
    write_gguf(osrc.model, osrc.tokenizer, wrong, "Q8_0")
    return {"root": root, "model": model, "reference": make_random_model(root / "reference", seed=6, hidden=256),
            "forget": make_forget_dir(root / "forget", n=24), "gguf": gguf, "wrong": wrong}


def _sweep(world, tmp_path, name, lines, **kw):
    from hubaudit.sweep import sweep

    models = tmp_path / f"{name}.txt"
    models.write_text("".join(line + "\n" for line in lines))
    return sweep(models, forget=str(world["forget"]), out=tmp_path / name, store=tmp_path / f"{name}.sqlite",
                 use_ray=False, progress=False, **kw)


def _cells(report) -> dict:
    return {(c.role, c.spec): (c.status, c.metrics, c.items) for c in report.cells}


def test_a_sweep_audits_a_published_build_on_the_audited_model_only(world, tmp_path):
    import hubaudit
    from hubaudit.plan import AuditRequest

    art = f"file:{world['gguf']}"
    request = AuditRequest(specs=f"rtn:8,{art},gguf:Q8_0")
    res = _sweep(world, tmp_path, "sweep", [f"{world['model']} {world['reference']}"], request=request)
    row = res.rows[0]
    assert row.status == "ok", row.reason
    rep = row.report
    cell = rep.cell("model", art)
    assert cell.status == "ok", cell.reason
    # the artifact was loaded and evaluated as published: the blocks the gguf:Q8_0 recipe evaluates
    assert cell.items == rep.cell("model", "gguf:Q8_0").items
    assert cell.backend["settings"]["file_type"] == "Q8_0"
    # a published build of the audited model is never tried on the original
    assert {c.spec for c in rep.cells if c.role == "reference"} == {"fp", "rtn:8", "gguf:Q8_0"}
    # ... and the verdict counts it: it has its regain, and no cell is named as not evaluated
    assert art in rep.derived["regained"] and "not evaluated" not in rep.verdict.summary
    lb = res.leaderboard.set_index("model")
    assert lb.loc[str(world["model"]), "verdict"] == rep.verdict.label

    # the same request through audit(): the same cells, the same verdict
    direct = hubaudit.audit(world["model"], reference=world["reference"], forget=world["forget"], store=False,
                            progress=False, request=request)
    assert _cells(direct) == _cells(rep)
    assert direct.verdict == rep.verdict
    assert direct.derived["regained"] == rep.derived["regained"]


def test_a_failed_requested_cell_never_leaves_the_label_robust(world, tmp_path):
    """With a threshold no random model reaches and 24 items, rtn:8 alone is robust; a requested published
    build that is not a build of this model fails its cell (in the sweep's worker), and the label says so."""
    import hubaudit

    line = [f"{world['model']} none"]
    alone = _sweep(world, tmp_path, "alone", line, specs="rtn:8", threshold=50)
    assert alone.rows[0].report.verdict.label == "robust"  # the control: the evidence alone says robust

    bad = f"file:{world['wrong']}"
    res = _sweep(world, tmp_path, "failed", line, specs=f"rtn:8,{bad}", threshold=50)
    rep = res.rows[0].report
    assert rep.cell("model", bad).status == "error" and "has 3 layers" in rep.cell("model", bad).reason
    assert rep.verdict.label == "incomplete"
    assert rep.verdict.summary.startswith(f"incomplete: not evaluated: {bad} (error: ")
    assert res.leaderboard.set_index("model").loc[str(world["model"]), "verdict"] == "incomplete"

    # the audit refuses that artifact before any work (it checks it against the model up front); a cell that
    # fails while running says the same there: a requested spec that errors leaves no robust label
    with pytest.raises(hubaudit.HubauditError, match="has 3 layers"):
        hubaudit.audit(world["model"], reference=False, forget=world["forget"], specs=f"rtn:8,{bad}", threshold=50,
                       store=False, progress=False)


def test_the_request_is_checked_once_with_its_defaults_in_one_place():
    from hubaudit.attacks import AttackSpec
    from hubaudit.errors import HubauditError
    from hubaudit.plan import DEFAULT_SPECS, AuditRequest

    r = AuditRequest()
    assert [str(s) for s in r.specs] == list(DEFAULT_SPECS)
    r = AuditRequest(specs="rtn:4,rtn:4, rtn:8", metrics="knowmem_f, verbmem_f")
    assert r.specs == (AttackSpec("rtn", ("4",)), AttackSpec("rtn", ("8",))) and r.metrics == ("knowmem_f", "verbmem_f")
    for bad, words in [(dict(alpha=1.5), "--alpha"), (dict(threshold=-1), "--threshold"), (dict(dtype="int3"), "--dtype"),
                       (dict(specs="rnt:4"), "rnt"), (dict(all_files=True, specs="rtn:4"), "--all-files")]:
        with pytest.raises(HubauditError, match=words):
            AuditRequest(**bad)
    with pytest.raises(AttributeError):  # frozen
        r.alpha = 0.1
    with pytest.raises(TypeError, match="not both"):
        AuditRequest.of(r, {"alpha": 0.1})


def test_the_sweep_command_audits_a_published_build_named_by_a_relative_path(world, tmp_path, monkeypatch, capsys):
    """The command line of the issue: ``hubaudit sweep models.txt --no-ray --backends rtn:8,file:NAME.gguf``."""
    import json

    from hubaudit.cli import main

    models = tmp_path / "models.txt"
    models.write_text(f"{world['model']} {world['reference']}\n")
    monkeypatch.chdir(world["gguf"].parent)
    art = f"file:{world['gguf'].name}"
    code = main(["sweep", str(models), "--no-ray", "--backends", f"rtn:8,{art}", "--forget", str(world["forget"]),
                 "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s.sqlite"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "0 failed" in out, out
    rep = json.loads(next((tmp_path / "out" / "reports").glob("*/report.json")).read_text())
    cells = {(c["role"], c["spec"]): c for c in rep["cells"]}
    assert cells[("model", art)]["status"] == "ok" and ("reference", art) not in cells
    assert art in rep["derived"]["regained"]
