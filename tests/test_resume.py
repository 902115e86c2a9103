"""An audit killed midway (SIGKILL) resumes without recomputing what it had finished, and ends with
the same report as an uninterrupted run; the killed run leaves --out as it was."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

SPECS = "rtn:8,rtn:6,rtn:5,rtn:4,rtn:3,rtn:2,rtn:4:g32,cast:bf16"


def _rows(db):
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {(r[0], r[1], r[3]): r[5] for r in con.execute("SELECT * FROM results")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def _cli(world, store, out, *extra):
    return [sys.executable, "-m", "hubaudit", "audit", str(world["model"]), "--reference", str(world["reference"]),
            "--forget", str(world["forget"]), "--backends", SPECS, "--store", str(store), "--out", str(out),
            "--quiet", "--fail-on", "none", *extra]  # random weights: an incomplete verdict, which no gate passes


@pytest.mark.slow
def test_sigkill_midway_then_resume(tmp_path, random_world):
    store, out = tmp_path / "store.sqlite", tmp_path / "out"
    # an earlier run's report and a file of the user's are in --out
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    proc = subprocess.Popen(_cli(random_world, store, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        cells_done = {k[:2] for k, _ in _rows(store).items() if k[2] == "_cell"}
        if len(cells_done) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the audit finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = _rows(store)
    cells_done = {k[:2] for k in stored if k[2] == "_cell"}
    total_cells = 2 * (1 + len(SPECS.split(",")))
    assert 3 <= len(cells_done) < total_cells
    # the killed run changed nothing in --out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    r = subprocess.run(_cli(random_world, store, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = _rows(store)
    for key, created in stored.items():  # nothing finished before the kill was computed again
        assert after[key] == created, key
    report = json.loads((out / "report.json").read_text())
    assert sum(c["reused"] for c in report["cells"]) >= len(cells_done) - 1  # a cell cut mid-metric is finished
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads(next((out / "history").glob("*/report.json")).read_text()) == {"earlier": True}

    # the same audit, uninterrupted, in a separate store
    out2 = tmp_path / "out2"
    r = subprocess.run(_cli(random_world, tmp_path / "other.sqlite", out2), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    clean = json.loads((out2 / "report.json").read_text())
    assert report["verdict"] == clean["verdict"]
    assert report["derived"] == clean["derived"]
    key = lambda c: (c["role"], c["spec"])  # noqa: E731
    assert [(key(c), c["metrics"], c["status"]) for c in report["cells"]] == \
           [(key(c), c["metrics"], c["status"]) for c in clean["cells"]]


def test_store_version_and_keys(tmp_path, random_world):
    """The store records its version (PRAGMA user_version), upgrades an older one in place and refuses a
    newer one; a quantized cell's key carries its backend's library versions; a local model's identity
    covers its tokenizer and chat template."""
    import shutil
    import sqlite3

    from hubaudit.audit import metric_key
    from hubaudit.errors import StoreError
    from hubaudit.metrics import METRICS, MetricConfig
    from hubaudit.modeling import ModelSource
    from hubaudit.store import STORE_VERSION, ResultStore

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as c:
        c.execute("CREATE TABLE results (model TEXT NOT NULL, spec TEXT NOT NULL, forget TEXT NOT NULL, metric TEXT "
                  "NOT NULL, metric_key TEXT NOT NULL, created REAL NOT NULL, record TEXT NOT NULL, PRIMARY KEY "
                  "(model, spec, forget, metric, metric_key))")
        c.execute("INSERT INTO results VALUES ('m','fp','f','knowmem_f','k',0,'{\"value\": 1}')")
    store = ResultStore(old)
    assert store.get("m", "fp", "f", "knowmem_f", "k") == {"value": 1}  # kept
    store.close()
    with sqlite3.connect(old) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION
        c.execute(f"PRAGMA user_version = {STORE_VERSION + 1}")
    with pytest.raises(StoreError, match="newer hubaudit"):
        ResultStore(old)

    src = ModelSource(random_world["model"], device="cpu")
    m = METRICS.get("knowmem_f")()
    assert "versions" not in metric_key(m, MetricConfig(), src)
    assert '"torch"' in metric_key(m, MetricConfig(), src, "rtn:4")
    copy = tmp_path / "same-weights-other-template"
    shutil.copytree(random_world["model"], copy)
    assert ModelSource(copy).identity == src.identity
    (copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert ModelSource(copy).identity != src.identity
