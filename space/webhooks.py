"""Audit on push: ``POST /webhooks/audit`` receives Hub webhooks (the secret compared in constant time; always
refused without one) and queues an audit of a push to ``main`` of a watched model, once per commit;
``GET /jobs/ID`` follows a job. Also what a webhook audit reads: whether a push changed only the card, and
the original model, from the watched card's ``base_model`` as a public Hub id only."""

import hmac

from checks import hub_repo
from settings import (DEVICE, PR_MODELS, WATCHED, WEBHOOK_FORGET, WEBHOOK_SECRET, WEBHOOK_SPECS, WEBHOOK_THRESHOLD,
                      log, space_token, store, wake)


def classify_webhook(payload) -> tuple[dict | None, str]:
    """(job inputs, "") for a push to main of a watched model; (None, why) for anything else."""
    repo = payload.repo
    if repo.type != "model":
        return None, f"not a model repository ({repo.type})"
    if payload.event.scope != "repo.content" or payload.event.action != "update":
        return None, f"not a push ({payload.event.scope} {payload.event.action})"
    if repo.name not in WATCHED:
        return None, f"{repo.name} is not watched by this Space"
    main = [u for u in (payload.updatedRefs or []) if u.ref == "refs/heads/main" and u.newSha]
    if not main:
        refs = ", ".join(u.ref for u in payload.updatedRefs or []) or "no refs"
        return None, f"not a push to main ({refs})"
    sha = main[0].newSha
    return {"repo": repo.name, "sha": sha, "old_sha": main[0].oldSha, "model": f"{repo.name}@{sha}",
            "reference": None, "forget": WEBHOOK_FORGET, "specs": [s for s in WEBHOOK_SPECS.split(",") if s],
            "threshold": WEBHOOK_THRESHOLD, "publish": "pr" if repo.name in PR_MODELS else "discussion"}, ""


def add_webhook_route(app) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from huggingface_hub import WebhookPayload

    async def audit_on_push(request: Request):
        if not WEBHOOK_SECRET:
            return JSONResponse({"error": "webhooks are off: set the WEBHOOK_SECRET secret of this Space"}, 401)
        given = request.headers.get("x-webhook-secret", "")
        if not hmac.compare_digest(given.encode(), WEBHOOK_SECRET.encode()):
            return JSONResponse({"error": "missing or wrong X-Webhook-Secret"}, 401)
        try:
            payload = WebhookPayload.model_validate(await request.json())
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": f"not a Hub webhook payload ({type(e).__name__})"}, 400)
        inputs, why = classify_webhook(payload)
        if inputs is None:
            return JSONResponse({"status": "ignored", "reason": why}, 200)
        # committed before we answer (a restart keeps it), and once per commit however often it is delivered
        jid, new = store.add_unique(inputs, "webhook", inputs["model"])
        if not new:
            return JSONResponse({"status": "ignored", "reason": "this commit is already audited", "job": jid})
        wake.set()
        return JSONResponse({"status": "queued", "job": jid}, 202)

    async def job_state(job_id: str):
        """A job's state as JSON (for a webhook sender that wants to follow its audit)."""
        job = store.get(job_id)
        if job is None:
            return JSONResponse({"error": f"no job {job_id}"}, 404)
        report = job.get("report") or {}
        return JSONResponse({
            "id": job["id"], "kind": job["kind"], "state": job["state"], "position": job.get("position"),
            "model": job["inputs"].get("model"), "message": job.get("message"),
            "verdict": (report.get("verdict") or {}).get("label"), "cells_done": len(job["cells"]),
        })

    app.add_api_route("/webhooks/audit", audit_on_push, methods=["POST"])
    app.add_api_route("/jobs/{job_id}", job_state, methods=["GET"])


def only_card_changed(repo: str, old: str | None, new: str, token) -> bool:
    """True when ``old`` -> ``new`` changed nothing but the card (a merged card PR, ours included)."""
    if not old or set(old) == {"0"}:
        return False
    from huggingface_hub import HfApi

    api = HfApi(token=token)

    def tree(rev):
        return {e.path: getattr(e, "blob_id", None) or getattr(e, "oid", None)
                for e in api.list_repo_tree(repo, revision=rev, recursive=True) if hasattr(e, "size")}

    a, b = tree(old), tree(new)
    a.pop("README.md", None)
    b.pop("README.md", None)
    return a == b


def webhook_reference(repo: str, sha: str):
    """The original model of a webhook audit: the watched card's ``base_model``, only as a public Hub id
    (never a path on this machine), fetched without the Space's token (someone else's card names it);
    False when there is none, or it is not a public model."""
    from huggingface_hub import HfApi

    from hubaudit import HubauditError
    from hubaudit.audit import open_model
    from hubaudit.source import base_model_of

    try:
        info = HfApi(token=False).model_info(repo, revision=sha)
    except Exception:  # noqa: BLE001 - a private watched model: its card is read with the token below
        info = None
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None) if info is not None else None
    if card is None:
        from hubaudit.detect import read_card

        try:
            card = read_card(f"{repo}@{sha}", token=space_token())[0]
        except HubauditError:
            card = {}
    card = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    base = base_model_of(card)
    if not base or hub_repo(base) is None:
        return False
    try:  # token=False: the original is opened as any visitor would, never with the Space's token
        return open_model(base, token=False, device=DEVICE)[0]
    except HubauditError as e:
        log.warning("webhook audit of %s: base_model %s not used (%s)", repo, base, e)
        return False
