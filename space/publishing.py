"""Where a finished audit goes: a webhook audit's pull request or discussion (with the Space's token), the
card pull request a visitor opens (with the visitor's own token, never the Space's), and the report a
visitor downloads (a copy without server paths, outside the data folder)."""

import json
import os
import traceback
from pathlib import Path

# settings first: the environment defaults it sets must be in place before gradio is imported
from settings import downloads_dir, log, space_token, store

import gradio as gr

from words import verdict_words


def publish_webhook_result(inp: dict, report) -> str:
    """A pull request with the card section (models that opted in) or a discussion, with the Space's token;
    returns the line the job's page shows about it."""
    from hubaudit import HubauditError
    from hubaudit.card import PR_TITLE_PREFIX, publish_card, render_section

    try:
        if inp.get("publish") == "pr":
            res = publish_card(report, inp["repo"], token=space_token(), pr=True)
            return f"pull request: {res.pr_url}" if res.pr_url else "the card already says this"
        else:
            from huggingface_hub import HfApi

            api = HfApi(token=space_token())
            title = f"{PR_TITLE_PREFIX}quantization audit of {inp['sha'][:7]} ({report.verdict.label})"
            # idempotent: a job that posted and then stopped (a crash before it was marked done) runs again
            # after the restart, and finds its discussion instead of posting a second one
            me = api.whoami()["name"]
            for d in api.get_repo_discussions(inp["repo"], author=me, discussion_type="discussion"):
                if d.title == title:
                    return f"discussion: {api.endpoint}/{inp['repo']}/discussions/{d.num}"
            d = api.create_discussion(
                inp["repo"], title=title,
                description=verdict_words(report.to_json(items=False)) + "\n\n" + render_section(report))
            return f"discussion: {d.url}"
    except HubauditError as e:
        return f"the audit finished, but publishing it failed: {e}"
    except Exception as e:  # noqa: BLE001
        log.error("publishing the result for %s failed:\n%s", inp["repo"], traceback.format_exc())
        return f"the audit finished, but publishing it failed ({type(e).__name__})"


def open_pr(job_id, oauth_token: gr.OAuthToken | None):
    """Open (or update) the card pull request with the signed-in visitor's token, never the Space's."""
    from hubaudit import HubauditError
    from hubaudit.card import publish_card
    from hubaudit.results import AuditReport

    if oauth_token is None or not getattr(oauth_token, "token", None):
        return "Sign in with your Hugging Face account first (the button at the top); the pull request is opened in your name."
    job = store.get((job_id or "").strip())
    if job is None or job["state"] != "done" or not job.get("report"):
        return "Run an audit first: the pull request carries its result."
    report = AuditReport.from_json(job["report"])
    repo = (report.inputs["model"] or {}).get("repo_id")
    if not repo:
        return "Only a model on the Hub has a card to open a pull request on."
    try:
        res = publish_card(report, repo, token=oauth_token.token, pr=True)
    except HubauditError as e:
        return f"⚠️ The pull request could not be opened: {e}"
    except Exception as e:  # noqa: BLE001
        log.error("PR on %s failed:\n%s", repo, traceback.format_exc())
        return f"⚠️ The pull request could not be opened ({type(e).__name__})."
    if not res.pr_url:
        return "The card on `main` already has this audit; no pull request needed."
    verb = "updated" if res.reused_pr else "opened"
    return f"Pull request {verb}: [{res.pr_url}]({res.pr_url})"


def public_report(job: dict) -> dict:
    """The report a visitor may download: no server paths (the store, the model's cache folder, an upload's
    folder), and for a webhook audit (perhaps of a private watched model) no per-item outputs. When the
    job's folder was evicted to free disk, the job database's copy (without per-item records)."""
    try:
        with open(job["report_path"], encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, TypeError, ValueError):
        report = json.loads(json.dumps(job.get("report") or {}))
    inp = report.get("inputs", {})
    inp.pop("store", None)
    for role in ("model", "reference", "retrain"):
        if isinstance(inp.get(role), dict):
            inp[role].pop("path", None)
            if not inp[role].get("repo_id"):
                inp[role]["name"] = Path(str(inp[role].get("name", ""))).name
    forget = inp.get("forget") or {}
    if forget.get("source") and not str(forget["source"]).startswith(("hub:", "builtin:")) and Path(str(forget["source"])).is_absolute():
        forget["source"] = "upload" if job["inputs"].get("forget") == "upload" else Path(str(forget["source"])).name
    if job["kind"] == "webhook":
        for cell in report.get("cells", []):
            for rows in (cell.get("items") or {}).values():
                for r in rows:
                    if isinstance(r, dict):
                        r.pop("output", None)
    return report


def download_copy(job: dict) -> str:
    """A per-job copy of :func:`public_report` in a temporary folder outside the data folder: Gradio serves
    it from its own cache, and nothing under the data folder (databases, uploads, job folders) is ever
    an allowed path."""
    folder = downloads_dir() / job["id"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    if not path.is_file() or path.stat().st_mtime < (job.get("finished") or 0):
        tmp = folder / ".report.json.tmp"
        tmp.write_text(json.dumps(public_report(job), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return str(path)
