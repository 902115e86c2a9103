"""report.json and the leaderboard's rows against their JSON Schemas (hubaudit/schema/, draft 2020-12): real
reports of tiny models (an audit with a reference and two attack families, one whose every attack cell failed,
a sweep's), the typed records' fields against the schema's, the version policy, and the reference page."""

import copy
import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from hubaudit.cli import main  # noqa: E402
from hubaudit.leaderboard import COLUMNS  # noqa: E402
from hubaudit.report import public_report_json  # noqa: E402
from hubaudit.results import (DERIVED_KEYS, READABLE_VERSIONS, SCHEMA_VERSION, AuditReport, CellResult,  # noqa: E402
                              Derived, Verdict, leaderboard_schema, report_schema)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "report-schema.md"
# The structure (everything but descriptions and titles) of report.schema.json at each version it was released
# with. A schema change makes this test fail: a new layout is a new SCHEMA_VERSION (and, if older reports
# still load, an entry in READABLE_VERSIONS), with its own line here; never edit an existing line.
REPORT_SCHEMA_STRUCTURE = {
    2: "67ebfe38d727bb9865688a33d052f3cbd6c89ad7a59a004eeba9ba34667b9a40",
    3: "5bb4ea07a33b4ca7957e42e00f5ec9e81f455d1dbcb8d76e827f160137c66ad8",
    4: "d93f3fae8a4a3323ea049eb8d1f5dc22e95e543d2ebd160dd3b1535e380fd0f6",
    5: "ab10571413cb6bf1400ef478b57a5b5818616182fe9f9ab196119060d8f3a68a",
}
LEADERBOARD_SCHEMA_STRUCTURE = {
    1: "e6bfa8d2193f628ab246bea75f4a7021c9a9972eb35b3373655265eaac5c3ca1",
    2: "717ee498307cd235f171ef70bdd5b936d6d4490dbc4a36321eedc29b65b419ce",
}


def structure_hash(schema: dict) -> str:
    """sha256 of the schema without its words (description, title, $comment): what a report must look like."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("description", "title", "$comment")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return hashlib.sha256(json.dumps(strip(schema), sort_keys=True).encode()).hexdigest()


def errors(schema: dict, doc) -> list[str]:
    v = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in v.iter_errors(doc)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny_world):
    """Real reports: an audit with a reference under a quantization and a pruning attack; the same model
    with every rtn cell failing (incomplete); a sweep (no Ray) of the model and of a missing one. The demo
    world at test size, whose original knows the forget set (an original that knows nothing leaves the
    verdict nothing to test, and the report's tables empty)."""
    import hubaudit.quant.rtn as rtn

    random_world = {"model": tiny_world.unlearned, "reference": tiny_world.target, "forget": tiny_world.forget_dir}
    root = tmp_path_factory.mktemp("schema")
    store = root / "store.sqlite"
    common = ["--forget", random_world["forget"], "--store", store, "--quiet", "--fail-on", "none"]
    assert main([str(a) for a in ["audit", random_world["model"], "--reference", random_world["reference"],
                                  "--attacks", "rtn:8,prune:0.2", "--out", root / "audit", *common]]) == 0
    assert main([str(a) for a in ["audit", random_world["model"], "--reference", random_world["reference"],
                                  "--control", random_world["reference"], "--attacks", "rtn:8,relearn:steps=2",
                                  "--out", root / "control", *common]]) == 0
    assert main([str(a) for a in ["audit", random_world["model"], "--reference", random_world["reference"],
                                  "--attacks", "rtn:8,rtn:4", "--sequential", "--out", root / "sequential", *common]]) == 0
    real_apply = rtn.RTNBackend.apply

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    rtn.RTNBackend.apply = broken
    try:
        assert main([str(a) for a in ["audit", random_world["model"], "--no-reference", "--metrics", "knowmem_f",
                                      "--attacks", "rtn:4", "--no-store", "--out", root / "failed", "--quiet",
                                      "--fail-on", "none", "--forget", random_world["forget"]]]) == 0
    finally:
        rtn.RTNBackend.apply = real_apply
    models = root / "models.txt"
    models.write_text(f"{random_world['model']} {random_world['reference']}\n{root / 'missing'}\n")
    assert main([str(a) for a in ["sweep", models, "--no-ray", "--attacks", "rtn:8,prune:0.2", "--out", root / "sweep",
                                  "--forget", random_world["forget"], "--store", store, "--quiet"]]) == 0
    import pyarrow.parquet as pq

    return {"audit": json.loads((root / "audit" / "report.json").read_text()),
            "failed": json.loads((root / "failed" / "report.json").read_text()),
            "control": json.loads((root / "control" / "report.json").read_text()),
            "sequential": json.loads((root / "sequential" / "report.json").read_text()),
            "sweep": json.loads(next((root / "sweep" / "reports").glob("*/report.json")).read_text()),
            "rows": pq.read_table(root / "sweep" / "leaderboard.parquet").to_pylist()}


def test_the_schemas_are_valid_draft_2020_12_and_ship_with_the_package():
    for schema in (report_schema(), leaderboard_schema()):
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"schema/*.json"' in pyproject  # package data: installed beside results.py


def test_real_reports_validate(reports):
    schema = report_schema()
    audit, failed, swept = reports["audit"], reports["failed"], reports["sweep"]
    for name in ("audit", "failed", "sweep", "control", "sequential"):
        assert errors(schema, reports[name]) == [], name
        assert errors(schema, public_report_json(reports[name])) == [], name  # as a leaderboard publishes it
    # what the fixtures are meant to cover is there: both families, a reference, a failed cell
    assert audit["derived"]["kinds"] == {"rtn:8": "quantization", "prune:0.2": "recovery"}
    assert {c["backend"].get("kind") for c in audit["cells"] if c["spec"] != "fp"} == {"quantization", "pruning"}
    assert any(c["role"] == "reference" for c in audit["cells"]) and audit["derived"]["changes"]
    assert failed["verdict"]["label"] == "incomplete"
    assert any(c["status"] == "error" and "kernel exploded" in c["reason"] for c in failed["cells"])
    assert swept["inputs"]["specs"] == ["rtn:8", "prune:0.2"]
    assert reports["control"]["derived"]["calibration"]["control"] and reports["control"]["derived"]["retain_effect"]
    assert reports["sequential"]["derived"]["sequential"]["pairs"]


def test_leaderboard_rows_validate(reports):
    rows = reports["rows"]
    assert {r["verdict"] == "error" for r in rows} == {True, False}  # an audited model and an error row
    for row in rows:
        assert errors(leaderboard_schema(), row) == [], row["model"]


def test_the_schema_is_closed_except_for_metric_names(reports):
    """A key the schema does not know is an error (so a layout change cannot slip through the tests above),
    but a metric it does not know, under its own name, is not (metrics are registered elsewhere)."""
    schema, good = report_schema(), reports["audit"]
    for path in (("derived",), ("verdict",), ("cells", 0), ()):
        bad = copy.deepcopy(good)
        target = bad
        for p in path:
            target = target[p]
        target["not_in_the_schema"] = 1
        assert errors(schema, bad), path
    new = copy.deepcopy(good)
    cell = next(c for c in new["cells"] if c["spec"] == "rtn:8")
    cell["metrics"]["es_f"], cell["n_items"]["es_f"] = 12.5, 12
    new["derived"]["regained"]["rtn:8"]["es_f"] = 3.0
    new["derived"]["changes"]["rtn:8"]["es_f"] = dict(next(iter(new["derived"]["changes"]["rtn:8"].values())))
    assert errors(schema, new) == []
    new["derived"]["regained"]["rtn:8"]["es_f"] = "three"  # open names, typed values
    assert errors(schema, new)
    row = dict(reports["rows"][0], fp_prob_f=41.0)
    assert errors(leaderboard_schema(), row) == []
    assert errors(leaderboard_schema(), dict(row, verdict="great"))


def test_the_typed_records_write_the_schemas_fields(reports):
    """Every field of the records is a property of the schema and back, so a field added in code without
    the schema (or the other way round) fails here."""
    defs = report_schema()["$defs"]
    assert set(DERIVED_KEYS) == set(defs["derived"]["properties"])
    assert {f.name for f in fields(Verdict)} == set(defs["verdict"]["properties"])
    cell_keys = {"backend" if f.name == "attack" else f.name for f in fields(CellResult)}
    assert cell_keys == set(defs["cell"]["properties"])
    assert set(report_schema()["properties"]) == {f.name for f in fields(AuditReport)}
    lb = leaderboard_schema()
    fixed = [c for c in COLUMNS if not c.startswith("fp_")]
    assert set(fixed) == set(lb["properties"]) == set(lb["required"])
    assert all(re.fullmatch(next(iter(lb["patternProperties"])), c) for c in COLUMNS if c.startswith("fp_"))


def test_reports_round_trip_through_the_typed_records(reports):
    for name in ("audit", "failed", "sweep"):
        d = reports[name]
        report = AuditReport.from_json(d)
        assert isinstance(report.derived, Derived) and isinstance(report.verdict, Verdict)
        assert report.to_json() == d, name
        assert json.dumps(report.to_json()) == json.dumps(d)  # the same keys in the same order
    report = AuditReport.from_json(reports["audit"])
    d = report.derived  # typed, and read by the JSON's keys as before
    assert d.changes is d["changes"] and d.get("recommendation") is None and "recommendation" not in d
    assert d.kinds["prune:0.2"] == "recovery" and dict(d) == reports["audit"]["derived"]
    cell = report.cell("model", "rtn:8")
    assert cell.attack is cell.backend and cell.attack["backend"] == "rtn"


def test_version_1_reports_still_load(reports):
    """A version 1 report (no per-item changes, no interval on the verdict) loads, its new fields empty."""
    old = copy.deepcopy(reports["audit"])
    old["schema_version"] = 1
    for key in ("changes", "retained_ci", "regained_share", "stderr", "statistics"):
        old["derived"].pop(key)
    for key in ("alpha", "ci", "p_value", "p_raw", "n_items", "up", "down", "tests", "items_needed", "retained"):
        old["verdict"].pop(key)
    assert 1 in READABLE_VERSIONS
    report = AuditReport.from_json(old)
    assert report.derived.changes == {} and report.verdict.ci is None
    assert report.verdict.label == reports["audit"]["verdict"]["label"]
    with pytest.raises(ValueError, match="schema version 99"):
        AuditReport.from_json({**old, "schema_version": 99})


def test_a_schema_change_needs_a_new_version():
    schema = report_schema()
    assert schema["version"] == SCHEMA_VERSION == schema["properties"]["schema_version"]["const"]
    assert SCHEMA_VERSION in READABLE_VERSIONS and max(READABLE_VERSIONS) == SCHEMA_VERSION
    assert SCHEMA_VERSION in REPORT_SCHEMA_STRUCTURE, (
        f"SCHEMA_VERSION {SCHEMA_VERSION} has no recorded schema structure: add "
        f"{SCHEMA_VERSION}: \"{structure_hash(schema)}\" to REPORT_SCHEMA_STRUCTURE")
    assert structure_hash(schema) == REPORT_SCHEMA_STRUCTURE[SCHEMA_VERSION], (
        f"report.schema.json changed but SCHEMA_VERSION is still {SCHEMA_VERSION}: bump SCHEMA_VERSION (results.py and "
        "the schema's version and schema_version const), keep the old one in READABLE_VERSIONS if it still loads, "
        f"and record {structure_hash(schema)} for the new version")
    lb = leaderboard_schema()
    assert structure_hash(lb) == LEADERBOARD_SCHEMA_STRUCTURE[lb["version"]], (
        "leaderboard.schema.json changed: bump its version and record " + structure_hash(lb))


def test_the_reference_page_documents_every_field():
    """docs/reference/report-schema.md names every property the schema has at its first two levels, both
    schemas' versions and every leaderboard column."""
    text = PAGE.read_text(encoding="utf-8")
    schema = report_schema()
    names = set(schema["properties"])
    for d in ("inputs", "cell", "derived", "verdict"):
        names |= set(schema["$defs"][d]["properties"])
    names |= set(leaderboard_schema()["properties"])
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"{PAGE.name} does not mention {missing}"
    assert f"version {SCHEMA_VERSION}" in text.lower() and f"version {leaderboard_schema()['version']}" in text.lower()


def test_a_cell_names_what_its_attack_did_under_both_names():
    cell = CellResult("model", "rtn:4", attack={"backend": "rtn"})
    assert cell.backend is cell.attack and CellResult("model", "rtn:4", backend={"backend": "rtn"}) == cell
    cell.backend = {"backend": "prune"}  # older code assigns it by its older name
    assert cell.attack == {"backend": "prune"} and cell.to_json()["backend"] == {"backend": "prune"}
    assert "attack" not in cell.to_json() and CellResult.from_json(cell.to_json()) == cell
    with pytest.raises(TypeError, match="not both"):
        CellResult("model", "rtn:4", attack={}, backend={})
