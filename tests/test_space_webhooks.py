"""The Space's audit on push: Hub webhooks posted to ``python space/app.py`` (a real child process, a local
Hub-compatible server behind HF_ENDPOINT). The secret is checked, only pushes to ``main`` of watched models
queue an audit, the job is in SQLite before the answer, a restart in the middle loses nothing, and the result
goes out as a discussion or, for a model that opted in, a pull request, with the Space's token."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from test_space import APP, SPACE_TOKEN, WEBHOOK_SECRET, SpaceApp, folder_files, make_space_hub

SIGNED = {"X-Webhook-Secret": WEBHOOK_SECRET}


def push(hub, repo: str, ref: str, old: str | None, new: str, scope: str = "repo.content", rtype: str = "model") -> dict:
    """A webhook payload as the Hub sends it (version 3) for a push."""
    return {
        "event": {"action": "update", "scope": scope},
        "repo": {"type": rtype, "name": repo, "id": "6530b5fd0b0d1f5a7f1a0001", "private": False,
                 "headSha": new, "url": {"web": f"{hub.endpoint}/{repo}", "api": f"{hub.endpoint}/api/models/{repo}"},
                 "owner": {"id": "6530b5fd0b0d1f5a7f1a0002"}},
        "webhook": {"id": "6530b5fd0b0d1f5a7f1a0003", "version": 3},
        "updatedRefs": [{"ref": ref, "oldSha": old, "newSha": new}],
    }


def jobs_in_db(app: SpaceApp) -> list[tuple]:
    with sqlite3.connect(app.root / "data" / "jobs.sqlite") as c:
        return c.execute("SELECT id, state FROM jobs ORDER BY seq").fetchall()


def wait_for(fn, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("space_hooks")
    hub = make_space_hub(root)
    # a model that opted in to pull requests; no base_model on its card, so its audit has two cells
    hub.create_repo("org/optin", files={k: v for k, v in folder_files(root / "src" / "unlearned").items()})
    hub.root_dir = root
    yield hub
    hub.stop()


@pytest.mark.slow
def test_webhooks_secret_main_only_restart_and_publish(hub, tmp_path):
    env = {"HUBAUDIT_WATCH": "org/unlearned,org/optin", "HUBAUDIT_PR_MODELS": "org/optin"}
    app = SpaceApp(hub, tmp_path / "app", HUBAUDIT_SPACE_PAUSE_WORKER="1", **env).start()
    try:
        main_sha = hub.head("org/unlearned")
        good = push(hub, "org/unlearned", "refs/heads/main", "0" * 40, main_sha)

        # no secret, or a wrong one: refused, nothing stored
        status, body = app.request("POST", "/webhooks/audit", good)
        assert status == 401, body
        status, body = app.request("POST", "/webhooks/audit", good, {"X-Webhook-Secret": "guess"})
        assert status == 401, body
        assert jobs_in_db(app) == []

        # signed, but not something to audit: a pull-request branch (our own card PRs), an unwatched
        # model, a discussion event, a dataset
        for payload, why in [
            (push(hub, "org/unlearned", "refs/pr/1", None, main_sha), "not a push to main"),
            (push(hub, "org/original", "refs/heads/main", None, hub.head("org/original")), "not watched"),
            (push(hub, "org/unlearned", "refs/heads/main", None, main_sha, scope="discussion"), "not a push"),
            (push(hub, "org/forget", "refs/heads/main", None, main_sha, rtype="dataset"), "not a model"),
        ]:
            status, body = app.request("POST", "/webhooks/audit", payload, SIGNED)
            assert status == 200 and body["status"] == "ignored" and why in body["reason"], body
        assert jobs_in_db(app) == []

        # signed pushes to main of watched models: queued, in order, visible with their queue position
        status, a = app.request("POST", "/webhooks/audit", good, SIGNED)
        assert status == 202 and a["status"] == "queued", a
        assert jobs_in_db(app) == [(a["job"], "queued")]  # stored when the answer came
        card_sha = hub.commit("org/unlearned", {"README.md": b"---\nbase_model: org/original\n---\n# edited card\n"},
                              message="edit the card")
        status, b = app.request("POST", "/webhooks/audit", push(hub, "org/unlearned", "refs/heads/main", main_sha, card_sha),
                                SIGNED)
        assert status == 202, b
        status, c = app.request("POST", "/webhooks/audit",
                                push(hub, "org/optin", "refs/heads/main", None, hub.head("org/optin")), SIGNED)
        assert status == 202, c
        assert [app.job(j["job"])["position"] for j in (a, b, c)] == [1, 2, 3]
        status, again = app.request("POST", "/webhooks/audit", good, SIGNED)  # the Hub retrying a delivery
        assert status == 200 and again["status"] == "ignored" and again["job"] == a["job"]
    finally:
        app.kill()

    # a restart keeps the queue; this one is killed in the middle of the first audit
    app = SpaceApp(hub, tmp_path / "app", **env).start()
    try:
        wait_for(lambda: app.job(a["job"])["state"] == "running", 120, "the first job to start")
    finally:
        app.kill()
    assert dict(jobs_in_db(app))[a["job"]] == "running"  # as the crash left it

    app = SpaceApp(hub, tmp_path / "app", **env).start()
    try:
        done = wait_for(lambda: all(app.job(j["job"])["state"] in ("done", "skipped", "error") for j in (a, b, c)),
                        240, "the three jobs to finish")
        assert done
        ja, jb, jc = (app.job(j["job"]) for j in (a, b, c))
        # random weights: the original knows nothing, so the verdict is incomplete, and it is still published
        assert ja["state"] == "done" and ja["verdict"] == "incomplete" and ja["cells_done"] == 4, ja
        assert jb["state"] == "skipped" and "only the model card changed" in jb["message"], jb
        assert jc["state"] == "done" and jc["cells_done"] == 2, jc

        # the watched model gets a discussion, the opted-in one a pull request, both by the Space's account
        discussions = [d for d in hub.discussions("org/unlearned") if not d["is_pull_request"]]
        assert len(discussions) == 1 and discussions[0]["author"] == "space-bot"
        assert discussions[0]["title"].startswith("hubaudit: ") and main_sha[:7] in discussions[0]["title"]
        assert "discussion:" in ja["message"]
        prs = hub.pull_requests("org/optin")
        # the card and hubaudit's file in the Hub's evaluation results folder (the forget set is a Hub dataset)
        assert len(prs) == 1 and prs[0]["author"] == "space-bot"
        assert sorted(prs[0]["files"]) == [".eval_results/hubaudit-org-forget.yaml", "README.md"]
        assert "pull request:" in jc["message"]
        assert hub.pull_requests("org/unlearned") == []
    finally:
        app.stop()
    log = (tmp_path / "app" / "app.log").read_text(errors="replace")
    assert "interrupted audit(s) back in the queue" in log
    assert SPACE_TOKEN not in log


@pytest.mark.slow
def test_no_secret_no_audit(tmp_path):
    """Without WEBHOOK_SECRET every webhook is refused, signed or not."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import app\n"
        "from fastapi import FastAPI\nfrom fastapi.testclient import TestClient\n"
        "a = FastAPI(); app.add_webhook_route(a); c = TestClient(a)\n"
        "body = json.loads(sys.argv[2])\n"
        "r1 = c.post('/webhooks/audit', json=body)\n"
        "r2 = c.post('/webhooks/audit', json=body, headers={'X-Webhook-Secret': ''})\n"
        "print(json.dumps([r1.status_code, r2.status_code, r1.json(), len(app.store.list())]))\n"
    )

    class _Hub:
        endpoint = "http://127.0.0.1:9"

    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_SECRET",)}
    env.update(HUBAUDIT_SPACE_DATA=str(tmp_path / "data"), HUBAUDIT_WATCH="org/unlearned", GRADIO_ANALYTICS_ENABLED="False")
    body = push(_Hub, "org/unlearned", "refs/heads/main", None, "a" * 40)
    out = subprocess.run([sys.executable, "-c", code, str(APP.parent), json.dumps(body)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    s1, s2, answer, n_jobs = json.loads(out.stdout.strip().splitlines()[-1])
    assert (s1, s2, n_jobs) == (401, 401, 0)
    assert "WEBHOOK_SECRET" in answer["error"]
