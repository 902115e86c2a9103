import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import hubaudit
from hubaudit.audit import derive
from hubaudit.report import render_markdown, write_report
from hubaudit.results import AuditReport, CellResult


def cells(model, reference=None):
    out = [CellResult("model", s, metrics=dict(m)) for s, m in model.items()]
    out += [CellResult("reference", s, metrics=dict(m)) for s, m in (reference or {}).items()]
    return out


def test_verdict_fragile_names_worst_spec_and_metric():
    cs = cells(
        {"fp": {"verbmem_f": 10, "knowmem_f": 20, "knowmem_r": 50, "mia_auc": 0.4},
         "rtn:8": {"verbmem_f": 11, "knowmem_f": 20, "knowmem_r": 50, "mia_auc": 0.4},
         "rtn:4": {"verbmem_f": 12, "knowmem_f": 38, "knowmem_r": 55, "mia_auc": 0.2}},
        {"fp": {"verbmem_f": 80, "knowmem_f": 80, "knowmem_r": 60}, "rtn:8": {"verbmem_f": 80, "knowmem_f": 80, "knowmem_r": 60},
         "rtn:4": {"verbmem_f": 60, "knowmem_f": 40, "knowmem_r": 55}},
    )
    derived, v = derive(cs, ["rtn:8", "rtn:4"], threshold=5, auc_retrain=0.5)
    assert (v.label, v.worst_spec, v.worst_metric) == ("fragile", "rtn:4", "knowmem_f")
    assert v.max_regained == pytest.approx(18)
    assert derived["regained"]["rtn:4"]["knowmem_r"] == pytest.approx(5)
    assert derived["retained"]["fp"]["knowmem_f"] == pytest.approx(25)  # 20 / 80: the paper's "21%"
    assert derived["retained"]["rtn:4"]["knowmem_f"] == pytest.approx(95)  # 38 / 40: the paper's "83%"
    assert cs[2].metrics["privleak"] == pytest.approx(-60)


def test_verdict_robust_below_threshold_and_incomplete_without_cells():
    cs = cells({"fp": {"knowmem_f": 20}, "rtn:4": {"knowmem_f": 24.9}})
    _, v = derive(cs, ["rtn:4"], threshold=5, auc_retrain=0.5)
    assert v.label == "robust" and "rtn:4" in v.summary
    cs[1].status = "skipped"
    _, v = derive(cs, ["rtn:4"], threshold=5, auc_retrain=0.5)
    assert v.label == "incomplete"


def test_report_round_trip_and_files(tmp_path, random_world):
    report = hubaudit.audit(random_world["model"], forget=random_world["forget"], specs="rtn:4", store=False,
                            progress=False, metrics="knowmem_f,knowmem_r")
    again = AuditReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report
    # every cell says how its text was generated (the fast loop on a plain Llama, whatever transformers)
    assert {c.spec: c.backend["decoding"] for c in report.cells} == {"fp": "fast", "rtn:4": "fast"}
    assert "`decoding: fast`" in render_markdown(report)
    assert report.derived["retained_note"].startswith("no reference")
    md = render_markdown(report)
    assert f"**Verdict: {report.verdict.label.upper()}**" in md and "| rtn:4 |" in md
    files = write_report(report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.png"}
    assert json.loads(files["report.json"].read_text())["schema_version"] == 1
    write_report(report, tmp_path)
    assert len(list((tmp_path / "history").iterdir())) == 1 and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError, match="schema version"):
        AuditReport.from_json({**report.to_json(), "schema_version": 99})


def test_every_module_imports_with_base_dependencies_and_without_torch():
    names = [m.name for m in pkgutil.walk_packages(hubaudit.__path__, "hubaudit.") if m.name != "hubaudit.__main__"]
    for name in names:
        importlib.import_module(name)
    code = ("import sys, pkgutil, importlib, hubaudit\n"
            "for m in pkgutil.walk_packages(hubaudit.__path__, 'hubaudit.'):\n"
            "    if m.name != 'hubaudit.__main__': importlib.import_module(m.name)\n"
            "print(sorted(k for k in ('torch', 'transformers', 'sklearn', 'matplotlib') if k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
