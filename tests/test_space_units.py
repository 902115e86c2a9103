"""The Space's pieces that need no browser: the job store's once-per-commit key, what a visitor may download,
and what a stranger's card or upload can do to the page."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """space/app.py imported in this process with its data folder in a temporary place and small caps."""
    data = tmp_path_factory.mktemp("space_data")
    env = {"HUBAUDIT_SPACE_DATA": str(data), "HUBAUDIT_SPACE_MAX_UPLOAD_BYTES": "4000",
           "HUBAUDIT_SPACE_MAX_UPLOAD_ITEMS": "5", "HUBAUDIT_SPACE_PAUSE_WORKER": "1",
           "HUBAUDIT_SPACE_MAX_ITEM_CHARS": "1000"}
    old = dict(os.environ)  # the Space's settings set some defaults of their own: all restored below
    os.environ.update(env)
    sys.path.insert(0, str(SPACE))
    try:
        # app.py's modules (settings.py, worker.py, ...) read the settings when imported: import them afresh
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").resolve().parent == SPACE:
                del sys.modules[name]
        spec = importlib.util.spec_from_file_location("hubaudit_space_app", SPACE / "app.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(SPACE))
        os.environ.clear()
        os.environ.update(old)


def test_a_commit_is_audited_once_however_many_jobs_came_before(tmp_path):
    sys.path.insert(0, str(SPACE))
    try:
        from jobs import JobStore
    finally:
        sys.path.remove(str(SPACE))
    store = JobStore(tmp_path / "jobs.sqlite")
    first, new = store.add_unique({"model": "org/m@" + "a" * 40}, "webhook", "org/m@" + "a" * 40)
    assert new
    for i in range(150):  # the old check looked at the oldest 100 jobs only
        store.add({"model": f"org/x{i}"}, kind="ui")
    again, new = store.add_unique({"model": "org/m@" + "a" * 40}, "webhook", "org/m@" + "a" * 40)
    assert (again, new) == (first, False)
    # a job that ended in error gives its key up: a redelivery may try again
    store.finish(first, "error", message="the Hub was down")
    retry, new = store.add_unique({"model": "org/m@" + "a" * 40}, "webhook", "org/m@" + "a" * 40)
    assert new and retry != first


def test_an_older_job_database_gets_the_key(tmp_path):
    """A database from before the key: the column is added and the live webhook jobs keyed (one each)."""
    db = tmp_path / "jobs.sqlite"
    with sqlite3.connect(db) as c:
        c.executescript("""CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL,
            inputs TEXT NOT NULL, state TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}',
            cells TEXT NOT NULL DEFAULT '[]', report TEXT, report_path TEXT, message TEXT, created REAL NOT NULL,
            started REAL, first_cell REAL, finished REAL, updated REAL NOT NULL);""")
        for i, state in enumerate(("done", "done", "error")):  # the old bug left two jobs for one commit
            c.execute("INSERT INTO jobs (id, seq, kind, inputs, state, created, updated) VALUES (?,?,?,?,?,0,0)",
                      (f"j{i}", i, "webhook", json.dumps({"model": "org/m@abc"}), state))
    sys.path.insert(0, str(SPACE))
    try:
        from jobs import JobStore
    finally:
        sys.path.remove(str(SPACE))
    store = JobStore(db)
    assert store.add_unique({"model": "org/m@abc"}, "webhook", "org/m@abc") == ("j0", False)


def test_card_text_is_shown_as_text(app):
    shown = app.md_escape("tofu [click me](https://evil.example) ![x](https://evil.example/i.png) <img src=x>")
    assert "](" not in shown.replace("\\](", "") and "<img" not in shown
    assert "click me" in shown


def test_a_path_typed_as_model_id_reads_no_local_card(app, tmp_path):
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "README.md").write_text("---\nbase_model: org/secret\ndatasets: [locuslab/TOFU]\n---\nTOFU forget10\n")
    for typed in (str(folder), f"../{folder.name}", "/etc/passwd"):
        out = app.prefill_from_card(typed, "", app.FORGET_CHOICES[0], "")
        assert all(o is not None and type(o).__name__ != "str" for o in out), (typed, out)  # every output skipped


def test_uploads_binary_too_big_or_too_many_items_get_one_line(app, tmp_path):
    binary = tmp_path / "forget.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(app.InputError, match="forget.jsonl is not UTF-8 text"):
        app.upload_to_muse(str(binary), tmp_path / "out1")
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(6)))
    with pytest.raises(app.InputError, match="more than 5 items"):
        app.upload_to_muse(str(many), tmp_path / "out2")
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": "x" * 5000}) + "\n")
    with pytest.raises(app.InputError, match="at most 0 MiB|takes at most"):
        app.upload_to_muse(str(big), tmp_path / "out3")
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert (app.upload_to_muse(str(ok), tmp_path / "out4") / "knowmem" / "forget_qa.jsonl").is_file()


def test_the_download_is_a_copy_without_server_paths(app, tmp_path):
    report = {"inputs": {"store": "/srv/data/results.sqlite",
                         "model": {"name": "org/m", "repo_id": "org/m", "path": "/srv/hf/models--org--m/snapshots/abc"},
                         "reference": None, "forget": {"name": "upload:f.jsonl", "source": str(tmp_path / "uploads" / "x")}},
              "cells": [{"items": {"knowmem_f": [{"score": 1.0, "output": "the private model said this"}]}}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    for kind in ("ui", "webhook"):
        job = {"id": f"job-{kind}", "kind": kind, "report_path": str(path), "finished": 0,
               "inputs": {"forget": "upload"}}
        copy = Path(app.download_copy(job))
        assert not copy.is_relative_to(app.DATA)
        text = copy.read_text()
        assert "/srv/" not in text and str(tmp_path) not in text and "store" not in json.loads(text)["inputs"]
        assert ("the private model said this" in text) == (kind == "ui")  # a webhook audit's outputs stay home


def test_the_worker_survives_an_error_outside_an_audit(app, monkeypatch, caplog):
    import threading

    stop, calls = threading.Event(), []

    def claim():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        stop.set()
        return None

    monkeypatch.setattr(app.store, "claim_next", claim)
    monkeypatch.setattr(app.worker, "_warm_up", lambda: None)  # worker_loop's own module (space/worker.py)
    monkeypatch.setattr(app.worker, "POLL_SECONDS", 0.01)
    app.worker_loop(stop)  # returns only because stop was set: the first error did not end it
    assert len(calls) == 2 and "the worker recovered" in caplog.text


def test_an_audit_past_the_time_limit_stops(app):
    import time

    prog = app.JobProgress("j", {}, deadline=time.monotonic() - 1)
    with pytest.raises(app.JobTimeout):
        prog.update(1)
    assert not isinstance(app.JobTimeout(), Exception)  # the audit's per-cell `except Exception` cannot swallow it


def test_one_visitor_cannot_fill_the_queue(app):
    key = "v" * 16
    for _ in range(app.MAX_JOBS_PER_VISITOR):
        app.store.add({"model": "org/m", "visitor": key}, kind="ui")
    with pytest.raises(app.InputError, match="at most 2 per visitor"):
        app.check_queue_room(key)
    app.check_queue_room("w" * 16)  # another visitor still gets in


def test_disk_stays_within_its_budget_oldest_first(app, tmp_path, monkeypatch):
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))  # no download copies from other tests

    old_job, new_job = app.DATA / "jobs" / "oldjob", app.DATA / "jobs" / "newjob"
    for i, d in enumerate((old_job, new_job)):
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.json").write_bytes(b"x" * 3000)
        t = time.time() - 1000 + i * 500
        os.utime(d, (t, t))
    deleted = app.evict_disk(budget=4000, hub_cache=tmp_path / "no-hub-cache")
    assert str(old_job) in deleted and not old_job.exists() and new_job.exists()


def test_a_webhook_result_is_posted_once_even_when_publishing_runs_again(app, tmp_path, monkeypatch):
    """A job that posted its discussion and then stopped before it was marked done runs again after the
    restart: it finds its discussion instead of posting a second one."""
    from hubserver import LocalHub, use_endpoint
    from test_card import make_report

    token = "hf_space_bot_token"
    with LocalHub(tmp_path / "server") as hub, use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        hub.add_token(token, user="space-bot")
        hub.create_repo("org/unlearned", files={"README.md": b"# m\n", "config.json": b"{}"})
        monkeypatch.setenv("HF_TOKEN", token)
        inp = {"repo": "org/unlearned", "sha": "a" * 40, "publish": "discussion"}
        first = app.publish_webhook_result(inp, make_report())
        again = app.publish_webhook_result(inp, make_report())
        assert first.startswith("discussion:") and first == again
        assert len([d for d in hub.discussions("org/unlearned") if not d["is_pull_request"]]) == 1


def test_a_webhook_audit_reads_base_model_only_as_a_public_hub_id(app, tmp_path, monkeypatch):
    """Someone else's card names the original: a path is never read from this machine, and a Hub id is
    fetched without the Space's token (a private model the Space can read is not used as the original)."""
    from factories import make_random_model
    from hubserver import LocalHub, use_endpoint

    token = "hf_space_bot_token"
    original = make_random_model(tmp_path / "original", seed=2)
    files = {str(p.relative_to(original)): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    with LocalHub(tmp_path / "server") as hub, use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        hub.add_token(token, user="space-bot")
        hub.create_repo("org/original", files=files)
        hub.create_repo("org/private-original", files=files, private=True, token=token)
        shas = {}
        for name, base in (("path", "/etc"), ("public", "org/original"), ("private", "org/private-original")):
            shas[name] = hub.create_repo(f"org/w-{name}", files={"README.md": f"---\nbase_model: {base}\n---\n".encode(),
                                                                  "config.json": b"{}"})
        monkeypatch.setenv("HF_TOKEN", token)
        assert app.webhook_reference("org/w-path", shas["path"]) is False
        assert app.webhook_reference("org/w-private", shas["private"]) is False
        ref = app.webhook_reference("org/w-public", shas["public"])
        assert ref is not False and ref.repo_id == "org/original"
        assert not [r for r in hub.requests if "original" in r["path"] and r["user"] == "space-bot"]


def test_only_the_specs_on_the_page_are_accepted(app):
    """A request crafted past the checkboxes cannot name a published artifact (``file:`` would read a path on
    the Space's own disk) or any spec the page does not offer."""
    _, message = app.submit("org/m", "", "Synthetic (built in)", "", None, ["rtn:4", "file:/etc/hostname"], 5)
    assert "from the list on the page" in message  # refused before the model id is even looked up


# -- limits a visitor could bypass (issue 27) -----------------------------------------------------------------
class _Request:
    def __init__(self, forwarded: str, client: str = "10.0.0.9"):
        from types import SimpleNamespace

        self.headers = {"x-forwarded-for": forwarded}
        self.client = SimpleNamespace(host=client)


def test_the_visitor_key_is_the_proxys_last_hop_not_what_the_visitor_sends(app):
    keys = {app.visitor_key(_Request(f"203.0.113.{i}, 198.51.100.7")) for i in range(4)}  # forged first hops
    assert len(keys) == 1
    assert app.visitor_key(_Request("198.51.100.8")) not in keys  # another visitor, as the proxy saw them


def test_simultaneous_submits_cannot_pass_the_per_visitor_limit(app):
    import threading

    key, got = "s" * 16, []
    barrier = threading.Barrier(8)

    def submit():
        barrier.wait()
        got.append(app.store.add_limited({"model": "org/m", "visitor": key}, "ui", key, app.MAX_JOBS_PER_VISITOR)[0])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([j for j in got if j]) == app.MAX_JOBS_PER_VISITOR == app.store.count_active(key)


def test_the_upload_limit_is_given_to_gradio_at_launch(app, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def launch(self, *a, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(app.gr.Blocks, "launch", launch)
    with pytest.raises(Stop):
        app.main()
    assert seen["max_file_size"] == app.MAX_UPLOAD_BYTES  # refused by Gradio before it stores the upload
    assert Path(os.environ["GRADIO_TEMP_DIR"]) == app.GRADIO_TEMP and not app.GRADIO_TEMP.is_relative_to(app.DATA)


def test_gradios_temp_folder_counts_in_the_disk_budget(app, tmp_path, monkeypatch):
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(app.worker, "GRADIO_TEMP", tmp_path / "gradio")
    upload = tmp_path / "gradio" / "abc123" / "forget.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"x" * 5000)
    old = time.time() - 10_000
    os.utime(upload.parent, (old, old))
    deleted = app.evict_disk(budget=1000, hub_cache=tmp_path / "no-hub-cache")
    assert str(upload.parent) in deleted and not upload.exists()


def test_one_long_item_in_an_upload_is_refused_at_once(app, tmp_path):
    line = tmp_path / "long.jsonl"
    line.write_text(json.dumps({"text": "word " * (app.MAX_ITEM_CHARS // 5 + 1)}) + "\n")
    with pytest.raises(app.InputError, match="at most .* per text"):
        app.upload_to_muse(str(line), tmp_path / "out-long")


def test_a_failed_disk_eviction_does_not_leave_a_job_running_forever(app, monkeypatch):
    import threading

    stop = threading.Event()
    jid = app.store.add({"model": "org/m", "specs": ["rtn:4"], "threshold": 5}, kind="ui")
    ran = []

    def evict():
        raise OSError("disk full")

    def run(job):
        ran.append(job["id"])
        stop.set()
        raise RuntimeError("a bug after the claim")

    monkeypatch.setattr(app.worker, "_warm_up", lambda: None)
    monkeypatch.setattr(app.worker, "evict_disk", evict)
    monkeypatch.setattr(app.worker, "run_job", run)
    monkeypatch.setattr(app.worker, "POLL_SECONDS", 0.01)
    app.worker_loop(stop)
    assert len(ran) == 1  # the eviction failed, the audit still ran (the oldest queued job: perhaps not ours)
    assert app.store.get(ran[0])["state"] == "error"  # and its failure ended the job
    assert app.store.get(jid)["state"] in ("queued", "error")


def test_a_fresh_upload_is_never_evicted_before_its_job_exists(app, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    fresh = app.DATA / "uploads" / "just-written"
    fresh.mkdir(parents=True)
    (fresh / "knowmem.jsonl").write_bytes(b"x" * 5000)
    app.evict_disk(budget=0, hub_cache=tmp_path / "no-hub-cache")
    assert fresh.exists()


@pytest.mark.parametrize("job", ["[click](https://evil.example/login)", "![x](https://evil.example/t.png)",
                                 "abc` ![x](https://evil.example/t.png) `"])
def test_a_job_id_from_the_url_is_never_rendered_as_markdown(app, job):
    from types import SimpleNamespace

    out = app.render(job, None)
    assert "evil.example" not in out[0] and "There is no audit" in out[0]
    req = SimpleNamespace(query_params={"job": job})
    assert not isinstance(app.load_job_from_url(req), str)  # gr.skip(): nothing put in the box
    assert app.load_job_from_url(SimpleNamespace(query_params={"job": "0123abcd4567"})) == "0123abcd4567"


def test_queued_audits_run_sequentially_only_when_the_setting_or_the_job_asks(app, monkeypatch):
    job = {"specs": "rtn:4", "threshold": "5"}
    assert not app.worker.audit_request(job).sequential  # the fixed-sample audit stays the default
    monkeypatch.setattr(app.worker, "SEQUENTIAL", True)  # HUBAUDIT_SPACE_SEQUENTIAL=1
    assert app.worker.audit_request(job).sequential
    assert not app.worker.audit_request({**job, "sequential": False}).sequential  # a job that says wins
