"""hubaudit sweep: many models x specs on a local Ray (2 CPUs), one results store written by the driver only.

Three tiny models, two of them unlearned from one original (which is evaluated once), x 2 specs, through
the CLI: interrupted (Ctrl-C) and resumed, computing only what was missing, while a worker is killed in
the middle of a cell: the sweep ends with every cell exactly once, and a model's figures are the audit's
own. A model that cannot be audited is an ``error`` row and the sweep goes on.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model

SPECS = "rtn:4,rtn:8"


def _cells(db: Path) -> dict:
    """(model identity, spec) -> created time of its ``_cell`` row (one per finished cell)."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {(r[0], r[1]): r[2] for r in con.execute("SELECT model, spec, created FROM results WHERE metric='_cell'")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def _rows(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {tuple(r[:5]): r[5] for r in con.execute("SELECT model, spec, forget, metric, metric_key, created FROM results")}
    finally:
        con.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_world")
    w = {"orig": make_random_model(root / "orig", seed=1), "v1": make_random_model(root / "v1", seed=2),
         "v2": make_random_model(root / "v2", seed=3), "other": make_random_model(root / "other", seed=4),
         "forget": make_forget_dir(root / "forget"), "root": root}
    w["models"] = root / "models.txt"
    w["models"].write_text(f"# two unlearned variants of one original, and a model audited without one\n"
                           f"{w['v1']} {w['orig']}\n{w['v2']} {w['orig']}  # same original\n{w['other']} none\n")
    from hubaudit.modeling import ModelSource

    w["ids"] = {k: ModelSource(w[k], device="cpu").identity for k in ("orig", "v1", "v2", "other")}
    return w


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """A results store the in-process sweeps of this module share (cells one test computed, another reuses)."""
    return tmp_path_factory.mktemp("sweep_store") / "store.sqlite"


def _in_cell() -> set[int]:
    """Ray worker processes running a cell now: Ray names a process by the actor method it runs."""
    pids = set()
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if (p / "cmdline").read_bytes().startswith(b"ray::CellWorker.cell"):
                pids.add(int(p.name))
        except OSError:
            continue
    return pids


def _kill_first_cell(stop: threading.Event, killed: list) -> None:
    """SIGKILL the first worker seen in a cell, once it has been in it for 0.3 s (its first cell, which
    loads the model and takes seconds): in the middle of the cell, not at its end."""
    seen: dict[int, float] = {}
    while not stop.is_set():
        now = time.time()
        for pid in _in_cell():
            if now - seen.setdefault(pid, now) >= 0.3:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


def _cli(world, store, out):
    return [sys.executable, "-m", "hubaudit", "sweep", str(world["models"]), "--forget", str(world["forget"]),
            "--backends", SPECS, "--store", str(store), "--out", str(out), "--num-cpus", "2", "--quiet"]


def _session_processes(sid: int) -> list[int]:
    left = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
            left.append(int(p.name))
    return left


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_survives_a_killed_worker(world, shared_store, tmp_path):
    """`hubaudit sweep` on its own local Ray (2 CPUs): Ctrl-C in the middle exits 130, keeps the finished cells
    and leaves no process behind; the same command again computes only the missing cells while one of its
    workers is killed in the middle of a cell, and still ends with every cell exactly once."""
    pytest.importorskip("ray", reason="the sweep extra (pip install 'hubaudit[sweep]')")
    store, out = shared_store, tmp_path / "out"
    assert not _cells(store), "this test must run first on the module's store"
    # one item per batch: cells of seconds, not a fraction of one, so that the interrupt lands mid-sweep on a
    # fast idle machine too (the stored values do not depend on the batch size)
    # Ctrl-C's default action in the child, whatever this process inherited: a Python started with SIGINT
    # ignored (as pytest is after some tests, or a job started with `&`) never raises KeyboardInterrupt
    proc = subprocess.Popen(_cli(world, store, out) + ["--batch-size", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(_cells(store)) < 1:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err.decode()[-2000:]
        assert b"run the same command again to resume" in err
        deadline = time.time() + 30
        while _session_processes(proc.pid) and time.time() < deadline:  # Ray's own processes wind down
            time.sleep(0.5)
        assert not _session_processes(proc.pid), "the interrupted sweep left processes behind"
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
    before = _rows(store)
    done = {k[:2] for k in before if k[3] == "_cell"}
    assert 1 <= len(done) < 12

    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_first_cell, args=(stop, killed), daemon=True)
    watcher.start()
    try:
        r = subprocess.run(_cli(world, store, out), capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        watcher.join()
    assert r.returncode == 0, r.stderr[-2000:]
    assert killed, "no worker was seen running a cell"
    after = _rows(store)
    for key, created in before.items():  # nothing finished before the interrupt was computed again
        assert after[key] == created, key
    plan = json.loads((out / "sweep.json").read_text())
    stats = plan["stats"]
    assert stats["worker_restarts"] >= 1 and stats["error_cells"] == 0
    assert stats["computed_cells"] == 12 - len(done) and stats["reused_cells"] == len(done)
    # every cell exactly once: 4 models (the shared original once) x (full precision + 2 specs)
    ids = world["ids"]
    assert sorted(_cells(store)) == sorted((i, s) for i in ids.values() for s in ("fp", "rtn:4", "rtn:8"))
    assert [m["reference_identity"] for m in plan["models"]] == [ids["orig"], ids["orig"], None]

    import pandas as pd

    lb = pd.read_parquet(out / "leaderboard.parquet")
    assert sorted(lb["model"]) == sorted(str(world[k]) for k in ("v1", "v2", "other"))
    assert (lb["verdict"] != "error").all()
    assert (lb["n_items"] == 12).all()
    # random weights: the original knows nothing, so the lines audited against it test nothing (incomplete);
    # the line without an original tests every pair
    tested = lb["regained"].notna()
    assert tested.sum() == 1 and (lb.loc[~tested, "verdict"] == "incomplete").all()
    assert ((lb["regained_low"] <= lb["regained"]) & (lb["regained"] <= lb["regained_high"]))[tested].all()
    has_ref = lb.set_index("model")["retained"]
    assert has_ref.notna()[str(world["v1"])] and has_ref.isna()[str(world["other"])]  # retained needs the original
    md = (out / "leaderboard.md").read_text()
    for row in lb.itertuples():
        assert (out / row.report / "report.json").is_file() and f"({row.report}/report.md)" in md

    # a model's sweep report holds the same cells, figures and verdict as `hubaudit audit` of it
    from hubaudit import audit
    from hubaudit.results import AuditReport

    v1 = lb.set_index("model").loc[str(world["v1"]), "report"]
    swept = AuditReport.from_json(json.loads((out / v1 / "report.json").read_text()))
    alone = audit(world["v1"], reference=world["orig"], forget=world["forget"], specs=SPECS, store=store, progress=False)
    assert alone.timings["reused_cells"] == 6  # the sweep's cells are the audit's: found in the store, keys and all
    assert swept.verdict == alone.verdict
    assert json.loads(json.dumps(swept.derived.to_dict())) == json.loads(json.dumps(alone.derived.to_dict()))
    assert [(c.role, c.spec, c.metrics) for c in swept.cells] == [(c.role, c.spec, c.metrics) for c in alone.cells]


@pytest.mark.slow
def test_failing_models_become_error_rows(world, shared_store, tmp_path):
    """A model that cannot be read (broken weights, in its Ray worker) or found becomes an error row with its
    reason, and the sweep goes on (the good model's cells come from the store the test above filled)."""
    import shutil

    pytest.importorskip("ray", reason="the sweep extra (pip install 'hubaudit[sweep]')")
    from hubaudit.sweep import sweep

    broken = tmp_path / "broken"
    shutil.copytree(world["other"], broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    models = tmp_path / "models.txt"
    models.write_text(f"{broken} none\n{tmp_path / 'missing'}\n{world['other']} none\n")
    res = sweep(models, forget=str(world["forget"]), specs="rtn:4", store=shared_store, out=tmp_path / "out",
                num_cpus=2, progress=False)
    by = {r.model: r for r in res.rows}
    # refused when planned, before any worker loads it: its weights file is not a safetensors file
    assert by[str(broken)].status == "error" and "model.safetensors is damaged" in by[str(broken)].reason
    assert by[str(tmp_path / "missing")].status == "error" and "not found" in by[str(tmp_path / "missing")].reason
    assert by[str(world["other"])].status == "ok"
    lb = res.leaderboard.set_index("model")
    assert lb.loc[str(broken), "verdict"] == "error" and "is damaged" in lb.loc[str(broken), "summary"]
    assert lb.loc[str(world["other"]), "verdict"] != "error"


# -- inputs a user gets wrong: one line, exit 2 --------------------------------------------------------


def test_models_file_and_search_errors(tmp_path, capsys):
    from hubaudit.cli import main

    bad = tmp_path / "models.txt"
    bad.write_text("org/a org/ref synthetic org/control extra\n")
    assert main(["sweep", str(bad), "--no-ray"]) == 2
    assert "models.txt:1: a line is MODEL [REFERENCE [FORGET [CONTROL]]]" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["sweep", str(empty), "--no-ray"]) == 2
    assert "names no model" in capsys.readouterr().err
    assert main(["sweep", "--search", "stars=5"]) == 2
    assert "--search: 'stars=5' is not one of" in capsys.readouterr().err
    assert main(["sweep", str(bad), "--search", "tag=x"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["sweep", str(empty), "--seed", "3"]) == 2  # a seed orders a sequential sweep's draws only
    assert "add --sequential or drop --seed" in capsys.readouterr().err


def test_a_sequential_sweeps_plan_names_no_cells(world, tmp_path, capsys):
    """--dry-run --sequential: the models are pinned and the plan written; the cells are not counted in
    advance (a sequential audit decides them round by round)."""
    from hubaudit.cli import main

    out = tmp_path / "plan"
    assert main(["sweep", str(world["models"]), "--forget", str(world["forget"]), "--sequential", "--dry-run",
                 "--no-ray", "--out", str(out), "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "3 models, sequential: each model's cells and items are decided round by round" in capsys.readouterr().out
    plan = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in plan["models"]] == ["pending"] * 3


def test_models_file_lines():
    from hubaudit.sweep import SweepEntry, read_models_file

    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("org/a@v2  # a comment\n\n./local none muse-news\norg/b - tofu-forget01\n")
    try:
        assert read_models_file(f.name) == [SweepEntry("org/a@v2"), SweepEntry("./local", "none", "muse-news"),
                                            SweepEntry("org/b", None, "tofu-forget01")]
    finally:
        os.unlink(f.name)


@pytest.mark.slow
def test_a_sweep_with_tofu_metrics_keys_their_prompts_by_the_models_tokenizer(tmp_path):
    """TOFU metrics key stored cells by a rendered prompt, which needs the model's tokenizer: the sweep's driver
    plans models without loading them, and reads only the tokenizer (it crashed with an AttributeError)."""
    from factories import write_rows
    from hubaudit.sweep import plan_model, sweep
    from qa_world import qa_models, tofu_rows

    forget, retain = tofu_rows()
    folder = tmp_path / "tofu"
    write_rows(folder / "tofu/forget.json", forget)
    write_rows(folder / "tofu/retain.json", retain)
    model = qa_models()["known"]
    planned = plan_model(str(model), device="cpu")
    assert planned.tokenizer("Where was the author born?")["input_ids"]
    models = tmp_path / "models.txt"
    models.write_text(f"{model} none\n")
    res = sweep(models, forget=str(folder), specs="rtn:8", metrics="tofu_prob_f", store=tmp_path / "store.sqlite",
                out=tmp_path / "out", use_ray=False, progress=False)
    (row,) = res.rows
    assert row.status == "ok", row.reason


@pytest.mark.slow
def test_a_sequential_sweep_gives_each_models_sequential_audit(tiny_world, tmp_path):
    """``sweep --sequential``: every model's whole sequential audit runs in one worker (on Ray, then in this
    process): labels, decisions and items drawn equal ``hubaudit audit --sequential``'s; a rerun reads every
    round from the store and computes nothing; a line that names a control is an error row (not yet
    calibrated sequentially) and the sweep goes on."""
    import hubaudit
    from hubaudit.sweep import sweep

    models = tmp_path / "models.txt"
    models.write_text(f"{tiny_world.constructed} {tiny_world.target}\n{tiny_world.retain_only} {tiny_world.target}\n"
                      f"{tiny_world.unlearned} {tiny_world.target} - {tiny_world.retain_only}\n")
    kw = dict(forget=str(tiny_world.forget_dir), specs="rtn:8,rtn:4", sequential=True, progress=False)
    # one CPU: the second model's worker waits for the first's to finish and free it
    first = sweep(models, store=tmp_path / "store.sqlite", out=tmp_path / "out", num_cpus=1, **kw)
    again = sweep(models, store=tmp_path / "store.sqlite", out=tmp_path / "again", use_ray=False, **kw)
    alone = {m: hubaudit.audit(m, reference=tiny_world.target, store=False, **kw)  # computed afresh
             for m in (tiny_world.constructed, tiny_world.retain_only)}
    for res in (first, again):
        constructed, retain_only, with_control = res.rows
        assert with_control.status == "error" and "--sequential does not calibrate against a control" in with_control.reason
        for row, model, label in ((constructed, tiny_world.constructed, "fragile"),
                                  (retain_only, tiny_world.retain_only, "robust")):
            assert row.status == "ok", row.reason
            assert row.report.verdict.label == alone[model].verdict.label == label, row.report.verdict.summary
            assert row.report.derived["sequential"]["pairs"] == alone[model].derived["sequential"]["pairs"]
            assert [(c.role, c.spec, c.n_items) for c in row.report.cells] == [(c.role, c.spec, c.n_items)
                                                                               for c in alone[model].cells]
    assert first.stats["sequential_tokens"] > 0 and first.stats["computed_cells"] > 0
    assert again.stats["sequential_tokens"] == 0  # every round of both models read from the store
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "fragile" in board and "robust" in board
