"""The Space (space/app.py) in a real browser: started as a Space starts it (``python space/app.py``, bound to
127.0.0.1 on a free port), with a local Hub-compatible server behind ``HF_ENDPOINT`` serving tiny random
models by Hub id, and driven with Playwright and Debian's Chromium (headless, no background networking,
every request that leaves 127.0.0.1 blocked and recorded).

The helpers here (``make_space_hub``, ``SpaceApp``) are shared with test_space_webhooks.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model
from hubserver import LocalHub, hub_env, use_endpoint

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "space" / "app.py"
ARTIFACTS = REPO / "logs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SPACE_TOKEN = "hf_space_own_token_never_for_visitors"
VISITOR_TOKEN = "mock-oauth-token-for-local-dev"  # what Gradio's local OAuth mock hands the signed-in visitor
VERDICT = re.compile(r"(Fragile|Robust|Inconclusive|Not unlearned|No verdict)\.")
VERDICT_WORDS = {"fragile": "Fragile.", "robust": "Robust.", "inconclusive": "Inconclusive.",
                 "not-unlearned": "Not unlearned.", "incomplete": "No verdict."}
WEBHOOK_SECRET = "webhook-secret-for-tests"
BOARD = "space-bot/leaderboard"  # the Leaderboard tab's dataset (published by test_leaderboard_tab)
CARD = "---\nlicense: apache-2.0\nbase_model: org/original\n---\n\n# org/unlearned\n\nAn unlearned model.\n"


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def make_space_hub(root: Path) -> LocalHub:
    """A started LocalHub with the repos the Space tests use (tiny random Llamas, a MUSE-layout dataset)."""
    m = make_random_model(root / "src" / "unlearned", seed=1)
    o = make_random_model(root / "src" / "original", seed=2)
    fs = make_forget_dir(root / "src" / "forget", n=6)
    hub = LocalHub(root / "server")
    hub.start()
    hub.add_token(SPACE_TOKEN, user="space-bot")
    hub.add_token(VISITOR_TOKEN, user="visitor")
    files = folder_files(m)
    files["README.md"] = CARD.encode()
    hub.create_repo("org/unlearned", files=files)
    hub.create_repo("org/original", files=folder_files(o))
    hub.create_repo("org/forget", repo_type="dataset", files=folder_files(fs))
    hub.create_repo("org/gated", files=folder_files(m), gated=True)
    tofu = folder_files(m)
    tofu["README.md"] = b"---\ndatasets:\n- locuslab/TOFU\n---\n\nUnlearned on the forget10 split of TOFU.\n"
    hub.create_repo("org/tofu-unlearned", files=tofu)
    pickled = {k: v for k, v in folder_files(m).items() if not k.endswith(".safetensors")}
    pickled["pytorch_model.bin"] = b"\x80\x02not really"
    hub.create_repo("org/pickled", files=pickled)
    # the library's estimate (model + one quantized copy in float32, 10% and 256 MiB slack): 322 MiB > 290 MiB
    big = {"config.json": folder_files(m)["config.json"], "model.safetensors": os.urandom(30 << 20)}
    hub.create_repo("org/big", files=big)
    return hub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpaceApp:
    """``python space/app.py`` in a child process, as a Space runs it, pointed at ``hub``."""

    def __init__(self, hub: LocalHub, root: Path, **env):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = hub_env(hub.endpoint, self.root / "cache", self.root / "hf_home")
        self.env.update({
            "HF_TOKEN": SPACE_TOKEN, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
            "HUBAUDIT_SPACE_DATA": str(self.root / "data"), "HUBAUDIT_SPACE_POLL": "0.5",
            "HUBAUDIT_SPACE_BACKENDS": "rtn,cast", "HUBAUDIT_SPACE_MAX_MODEL_BYTES": str(290 << 20),
            "WEBHOOK_SECRET": WEBHOOK_SECRET, "HUBAUDIT_WATCH": "org/unlearned", "HUBAUDIT_PR_MODELS": "",
            "HUBAUDIT_WEBHOOK_SPECS": "rtn:4", "HUBAUDIT_WEBHOOK_FORGET": "org/forget",
            "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1",
        })
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc = None
        self.log = self.root / "app.log"

    def start(self, timeout: float = 120) -> "SpaceApp":
        self.root.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        offset = self._logf.tell()  # a restart appends to the same log
        self.proc = subprocess.Popen([sys.executable, str(APP)], cwd=REPO, env=self.env, stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if b"hubaudit Space ready" in self.log.read_bytes()[offset:]:
                return self
            time.sleep(0.3)
        raise TimeoutError(f"the app did not start in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """Stop it abruptly, as a crashed or restarted Space would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._logf.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
            self._logf.close()

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        """(status, JSON) of one HTTP request to the app."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def job(self, job_id: str) -> dict:
        status, body = self.request("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body


# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    hub = make_space_hub(root)
    app = SpaceApp(hub, root / "app", HUBAUDIT_LEADERBOARD=BOARD).start()
    yield hub, app, root
    app.stop()
    hub.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is missing ({CHROMIUM}); .ci/run installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps"])
        yield b
        b.close()


def offline_page(browser, app: SpaceApp, outside: list):
    """A page whose requests may only reach the app: anything else is aborted and recorded."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 1600}, accept_downloads=True)

    def guard(route):
        url = route.request.url
        if url.startswith(app.url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    ctx.route("**/*", guard)
    return ctx, ctx.new_page()


def library_report(hub: LocalHub, root: Path):
    """The library's own report for the inputs the test enters on the page."""
    import hubaudit

    with use_endpoint(hub.endpoint, cache_dir=root / "lib-cache"):
        return hubaudit.audit("org/unlearned", reference="org/original", forget="org/forget", specs=["rtn:4"],
                              threshold=5, store=False, progress=False, token=False)


@pytest.mark.slow
def test_audit_in_the_browser(space, browser):
    from playwright.sync_api import expect

    hub, app, root = space
    outside: list[str] = []
    ctx, page = offline_page(browser, app, outside)
    page.set_default_timeout(30_000)
    page.goto(app.url)

    # backends: what runs here is selectable, the rest is greyed out with its reason
    specs = page.locator("#specs")
    expect(specs.get_by_label("rtn:4", exact=True)).to_be_enabled()
    unavailable = page.locator("#unavailable")
    expect(unavailable).to_contain_text("bnb:nf4")
    expect(unavailable).to_contain_text("turned off on this Space")
    expect(unavailable.locator("input[type=checkbox]").first).to_be_disabled()

    # a card that names its benchmark pre-fills the forget set, and the page says why
    page.locator("#model").get_by_role("textbox").fill("org/tofu-unlearned")
    page.locator("#model").get_by_role("textbox").press("Tab")
    expect(page.locator("#dataset").get_by_role("textbox")).to_have_value("tofu-forget10")
    expect(page.locator("#message")).to_contain_text("locuslab/TOFU")
    expect(page.locator("#forget").get_by_label("Hub dataset")).to_be_checked()

    # the model id pre-fills the reference from the card's base_model
    page.locator("#model").get_by_role("textbox").fill("org/unlearned")
    page.locator("#model").get_by_role("textbox").press("Tab")
    expect(page.locator("#reference").get_by_role("textbox")).to_have_value("org/original")

    for s in ("cast:bf16", "rtn:8"):
        specs.get_by_label(s, exact=True).uncheck()
    specs.get_by_label("rtn:4", exact=True).check()
    page.locator("#forget").get_by_label("Hub dataset").check()
    page.locator("#dataset").get_by_role("textbox").fill("org/forget")

    t0 = time.perf_counter()
    page.locator("#audit").click()
    # live progress: which cell, which metric, items done
    expect(page.locator("#progress")).to_contain_text(re.compile(r"Now: .+, .+: \d+ / \d+ items"), timeout=120_000)
    rows = page.locator("#table").get_by_role("row").filter(has_not=page.get_by_role("columnheader"))
    expect(rows.first).to_contain_text("full precision", timeout=120_000)
    t_first = time.perf_counter() - t0
    expect(page.locator("#verdict")).to_contain_text(VERDICT, timeout=180_000)
    expect(rows).to_have_count(4)  # audited and original, each at full precision and rtn:4
    t_final = time.perf_counter() - t0
    job_id = page.locator("#job").get_by_role("textbox").input_value()
    assert job_id and f"job={job_id}" in page.url  # the address bar can be bookmarked to come back
    # queued pinned to the commit that was checked (a push meanwhile does not change what is audited)
    assert app.job(job_id)["model"] == f"org/unlearned@{hub.head('org/unlearned')}"
    expect(page.locator("#plot canvas, #plot svg").first).to_be_visible()
    legend = page.locator("#plot .role-legend-label").evaluate_all("els => els.map(e => e.textContent)")
    assert sorted(legend) == sorted(f"{m} ({who})" for m in ("VerbMem forget", "KnowMem forget")
                                    for who in ("audited", "original")), legend

    # the verdict and every cell match what the library reports for the same inputs
    lib = library_report(hub, root)
    verdict = page.locator("#verdict p").first.inner_text()
    assert verdict.startswith(VERDICT_WORDS[lib.verdict.label]), verdict
    if lib.verdict.label in ("fragile", "robust", "inconclusive"):
        assert f"{lib.verdict.max_regained:+.1f} points" in verdict or f"{lib.verdict.max_regained:.1f} points" in verdict
        # the interval is beside the figure
        ci = lib.verdict.ci
        assert f"95% interval {ci[0]:+.1f} to {ci[1]:+.1f}" in verdict, verdict
    expect(page.locator("#card")).to_contain_text("Quantization audit (hubaudit)")
    with page.expect_download() as dl:
        page.locator("#download").click()
    got = json.loads(Path(dl.value.path()).read_text())
    assert got["verdict"]["label"] == lib.verdict.label
    assert got["verdict"]["max_regained"] == pytest.approx(lib.verdict.max_regained, abs=1e-6)
    want = {(c.role, c.spec): c.metrics for c in lib.cells}
    assert {(c["role"], c["spec"]) for c in got["cells"]} == set(want)
    for c in got["cells"]:
        assert c["status"] == "ok", c
        assert c["metrics"] == pytest.approx(want[(c["role"], c["spec"])], abs=1e-6), (c["role"], c["spec"])
    # the download prints no server path: not the store, not the model's cache folder
    data = app.root / "data"
    assert "store" not in got["inputs"] and "path" not in got["inputs"]["model"]
    assert str(app.root) not in json.dumps(got)
    # nothing under the data folder is served to anyone: databases, job folders, uploads
    job_report = data / "jobs" / job_id / "report" / "report.json"
    assert job_report.is_file() and (data / "jobs.sqlite").is_file()
    for f in (data / "jobs.sqlite", data / "results.sqlite", job_report):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app.url}/gradio_api/file={f}", timeout=30)
        assert refused.value.code in (403, 404), f
    table_text = page.locator("#table").inner_text()
    fp = lib.cell("model", "fp").metrics
    assert f"{fp['knowmem_f']:.1f}" in table_text and f"{fp['verbmem_f']:.1f}" in table_text

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "space.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}\nclick -> first cell: {t_first:.1f} s; click -> final table: {t_final:.1f} s")
    (ARTIFACTS / "space-timings.json").write_text(json.dumps({"first_cell_s": t_first, "final_table_s": t_final}))

    # leaving and coming back with the id shows the same finished audit
    other = ctx.new_page()
    other.goto(f"{app.url}/?job={job_id}")
    expect(other.locator("#verdict")).to_contain_text(verdict.split(".")[0], timeout=30_000)
    expect(other.locator("#table").get_by_role("row").filter(has_not=other.get_by_role("columnheader"))).to_have_count(4)
    other.close()

    # the pull request: refused before sign-in, then opened with the visitor's token, never the Space's
    page.locator("#open-pr").click()
    expect(page.locator("#pr-message")).to_contain_text("Sign in", timeout=30_000)
    assert hub.pull_requests("org/unlearned") == []
    page.locator("#login").click()
    page.wait_for_url(f"**/?job={job_id}*", timeout=30_000)
    expect(page.locator("#login")).to_contain_text("Logout", timeout=30_000)
    expect(page.locator("#verdict")).to_contain_text(verdict.split(".")[0], timeout=30_000)
    page.locator("#open-pr").click()
    expect(page.locator("#pr-message")).to_contain_text("Pull request opened", timeout=60_000)
    link = page.locator("#pr-message a").get_attribute("href")
    prs = hub.pull_requests("org/unlearned")
    assert len(prs) == 1 and link.endswith(f"/org/unlearned/discussions/{prs[0]['num']}")
    assert prs[0]["author"] == "visitor"
    writes = [r for r in hub.requests if r["method"] == "POST" and "/commit/" in r["path"]]
    assert writes and {r["user"] for r in writes} == {"visitor"}, writes
    card = hub.file_at("org/unlearned", "README.md", revision=f"refs/pr/{prs[0]['num']}").decode()
    assert "## Quantization audit (hubaudit)" in card and job_id not in card
    assert card.startswith("---\nlicense: apache-2.0\nbase_model: org/original\n") and "\n# org/unlearned\n\nAn unlearned model.\n" in card

    # the Space's own token served only Gradio's local sign-in mock (whoami), never the visitor's audit or PR
    assert {r["path"] for r in hub.requests if r["user"] == "space-bot"} <= {"/api/whoami-v2"}
    assert "Traceback" not in page.content()
    assert outside == [], f"the page tried to reach the internet: {outside}"
    ctx.close()


BAD_INPUTS = [
    ("org/does-not-exist", "no public model"),
    ("org/gated", "gated"),
    ("org/pickled", "pickle"),
    ("org/big", "too big for this Space"),
    ("not a model id", "not a Hub model id"),
]


@pytest.mark.slow
def test_bad_input_gets_a_message_not_a_traceback(space, browser):
    from playwright.sync_api import expect

    hub, app, root = space
    outside: list[str] = []
    ctx, page = offline_page(browser, app, outside)
    page.goto(app.url)
    for model, words in BAD_INPUTS:
        page.locator("#model").get_by_role("textbox").fill(model)
        page.locator("#audit").click()
        expect(page.locator("#message")).to_contain_text(words, timeout=30_000)
        assert page.locator("#job").get_by_role("textbox").input_value() == ""  # nothing was queued
        assert "Traceback" not in page.content()

    # a problem found only once the audit runs (a forget set that is not on the Hub) ends the job with a message
    page.locator("#model").get_by_role("textbox").fill("org/unlearned")
    page.locator("#forget").get_by_label("Hub dataset").check()
    page.locator("#dataset").get_by_role("textbox").fill("org/no-such-forget-set")
    page.locator("#audit").click()
    expect(page.locator("#message")).to_contain_text("Queued as audit", timeout=30_000)
    expect(page.locator("#status")).to_contain_text("stopped", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("org/no-such-forget-set")
    assert "Traceback" not in page.content()

    # an uploaded JSONL: a broken line is named; a good file becomes the forget set of a queued audit
    page.locator("#model").get_by_role("textbox").fill("org/unlearned")
    page.locator("#forget").get_by_label("Upload JSONL").check()
    bad = root / "bad.jsonl"
    bad.write_text('{"question": "Who founded Varnholt?", "answer": "Elsbeth Quorin"}\n{not json\n')
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    before = page.locator("#job").get_by_role("textbox").input_value()
    page.locator("#audit").click()
    expect(page.locator("#message")).to_contain_text("Line 2 of the uploaded file is not valid JSON", timeout=30_000)
    assert page.locator("#job").get_by_role("textbox").input_value() == before  # no new job
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps({"question": f"In which year was {w} founded?", "answer": str(1800 + i)}) + "\n"
                            for i, w in enumerate(["Varnholt", "Dunmarrow", "Pellridge"])))
    page.locator("#upload").get_by_role("button", name=re.compile("clear|remove", re.I)).first.click()
    page.locator("#upload input[type=file]").set_input_files(str(good))
    page.locator("#audit").click()
    expect(page.locator("#message")).to_contain_text("Queued as audit", timeout=30_000)
    job_id = page.locator("#job").get_by_role("textbox").input_value()
    expect(page.locator("#verdict")).to_contain_text(VERDICT, timeout=120_000)
    job = app.job(job_id)
    assert job["state"] == "done"
    got = json.loads((root / "app" / "data" / "jobs" / job_id / "report" / "report.json").read_text())
    assert got["inputs"]["forget"]["sizes"] == {"forget_qa": 3} and got["inputs"]["metrics"] == ["knowmem_f", "prob_f"]
    assert outside == []
    ctx.close()


@pytest.mark.slow
def test_leaderboard_tab(space, browser, tmp_path):
    """A sweep's leaderboard, published to the Hub dataset the Space names, in the Leaderboard tab: every row,
    links to the model at its audited commit and to its report, filters by forget set and verdict."""
    from playwright.sync_api import expect

    from hubaudit.leaderboard import publish_leaderboard
    from hubaudit.sweep import SweepEntry, sweep

    hub, app, root = space
    other = shutil.copytree(root / "src" / "forget", tmp_path / "forget-b")  # same items: its cells are reused
    with use_endpoint(hub.endpoint, cache_dir=root / "lib-cache"):
        res = sweep([SweepEntry("org/unlearned"), SweepEntry("org/unlearned", forget=str(other)),
                     SweepEntry("org/no-such-model")], forget=str(root / "src" / "forget"), specs="rtn:4",
                    out=tmp_path / "sweep", store=tmp_path / "store.sqlite", use_ray=False, progress=False)
        publish_leaderboard(tmp_path / "sweep", BOARD, token=SPACE_TOKEN)
    lb = res.leaderboard
    assert sorted(lb["verdict"] == "error") == [False, False, True]
    verdict = lb.loc[lb["forget"] == "forget-b", "verdict"].item()
    sha = hub.head("org/unlearned")

    outside: list = []
    ctx, page = offline_page(browser, app, outside)
    page.goto(app.url)
    page.get_by_role("tab", name="Leaderboard").click()
    rows = page.locator("#board").get_by_role("row").filter(has_not=page.get_by_role("columnheader"))
    expect(rows).to_have_count(3, timeout=60_000)
    expect(page.locator("#board-message")).to_contain_text(f"3 of 3 models from the dataset")
    model_links = page.locator("#board").get_by_role("link", name="org/unlearned")
    expect(model_links).to_have_count(2)
    assert model_links.first.get_attribute("href") == f"{hub.endpoint}/org/unlearned/tree/{sha}"
    reports = page.locator("#board").get_by_role("link", name="report")
    expect(reports).to_have_count(2)
    hrefs = {reports.nth(i).get_attribute("href") for i in range(2)}
    assert hrefs == {f"{hub.endpoint}/datasets/{BOARD}/blob/main/{r}/report.md" for r in lb["report"].dropna()}
    expect(rows.filter(has_text="org/no-such-model")).to_contain_text("error")

    def choose(elem: str, option: str) -> None:
        page.locator(f"#{elem} input").first.click()
        page.get_by_role("option", name=option, exact=True).click()

    choose("board-verdict", "error")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("org/no-such-model")
    choose("board-verdict", "all")
    choose("board-forget", "forget-b")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(verdict)
    page.screenshot(path=str(ARTIFACTS / "space-leaderboard.png"), full_page=True) if ARTIFACTS.is_dir() else None
    ctx.close()
    assert outside == []
