"""The worker: one audit at a time, in one thread, taking queued jobs from the job store; each job's
progress saved as it goes, the Space's time limit on one audit, and the disk budget kept before each job.
A visitor's audit reads public repositories only; a webhook audit uses the Space's token."""

import threading
import time
import traceback
from pathlib import Path

from checks import InputError, check_size
from publishing import publish_webhook_result
from settings import (DATA, DEVICE, GRADIO_TEMP, JOB_TIMEOUT_S, MAX_DISK_BYTES, MAX_FORGET_ITEMS, POLL_SECONDS,
                      RESULTS, SEQUENTIAL, downloads_dir, log, space_token, store, wake)
from webhooks import only_card_changed, webhook_reference


class JobTimeout(BaseException):
    """An audit ran past the Space's limit (a BaseException: the audit's per-cell error handling, which
    catches Exception so one failing backend does not end an audit, must not swallow it)."""


class JobProgress:
    """A tqdm-like object hubaudit.audit reports items to (cell, metric, items done), saved to the job; it
    also ends the audit (:class:`JobTimeout`) once ``deadline`` (time.monotonic()) has passed."""

    def __init__(self, job_id: str, totals: dict[str, int], deadline: float | None = None):
        self.job_id, self.totals, self.deadline = job_id, totals, deadline
        self.state = {"cell": None, "metric": None, "done": 0, "total": None}
        self._last = 0.0

    def _check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimeout()

    def set_description(self, text: str) -> None:
        self._check_time()
        role, _, spec = text.partition(" ")
        self.state.update(cell={"role": role, "spec": spec}, metric=None, done=0, total=None)
        self._save(force=True)

    def set_postfix_str(self, label: str) -> None:
        self._check_time()
        self.state.update(metric=label, done=0, total=self.totals.get(label))
        self._save(force=True)

    def update(self, n: int = 1) -> None:
        self._check_time()
        self.state["done"] += n
        self._save()

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.25:
            self._last = now
            store.set_progress(self.job_id, self.state)


def _cell_json(cell) -> dict:
    from dataclasses import asdict

    d = asdict(cell)
    d.pop("items", None)
    return d


def forget_source(inp: dict, job_dir: Path) -> str:
    if inp["forget"] == "upload":
        return inp["upload_dir"]
    return inp["forget"]


def audit_request(inp: dict):
    """A job's audit parameters: its specs and threshold; sequential when the job asks, else as the Space's
    ``HUBAUDIT_SPACE_SEQUENTIAL`` setting says."""
    from hubaudit.plan import AuditRequest

    return AuditRequest(specs=inp["specs"], threshold=float(inp["threshold"]), device=DEVICE,
                        sequential=bool(inp.get("sequential", SEQUENTIAL)))


def run_job(job: dict) -> None:
    from hubaudit import HubauditError
    from hubaudit import audit as run_audit
    from hubaudit.forget import load_forget_set
    from hubaudit.metrics import resolve_metrics

    jid, inp = job["id"], job["inputs"]
    job_dir = DATA / "jobs" / jid
    webhook = job["kind"] == "webhook"
    token = space_token() if webhook else False  # visitors' audits read public repos only
    try:
        # the audit's parameters, checked before anything is fetched: the plan audit() makes its cells from
        request = audit_request(inp)
        if webhook and only_card_changed(inp["repo"], inp.get("old_sha"), inp["sha"], token):
            store.finish(jid, "skipped", message="only the model card changed since the last audited commit")
            return
        if webhook:  # a push may have made the model too big for this Space: refuse before fetching it
            from huggingface_hub import HfApi

            info = HfApi(token=token).model_info(inp["repo"], revision=inp["sha"], files_metadata=True)
            check_size(inp["repo"], inp["sha"], sum(s.size or 0 for s in info.siblings or []
                                                    if s.rfilename.endswith(".safetensors")), token=token)
        fs = load_forget_set(forget_source(inp, job_dir))
        n_items = sum(fs.sizes().values())
        if n_items > MAX_FORGET_ITEMS:
            raise InputError(f"the forget set has {n_items} items; this Space audits at most {MAX_FORGET_ITEMS} "
                             "(run `hubaudit audit` on your own machine for more)")
        metrics = resolve_metrics(None, fs)
        totals = {m.label: len(getattr(fs, m.needs[0])) + (len(fs.mia_holdout) if m.name == "mia_auc" else 0)
                  for m in metrics}
        reference = inp.get("reference") or False
        if webhook and not inp.get("reference"):
            reference = webhook_reference(inp["repo"], inp["sha"])
        report = run_audit(
            inp["model"], reference=reference,
            forget=fs, request=request, out=job_dir / "report", store=RESULTS, token=token,
            progress=JobProgress(jid, totals, deadline=time.monotonic() + JOB_TIMEOUT_S),
            on_cell=lambda cell: store.add_cell(jid, _cell_json(cell)),
        )
        # a webhook job is done once its result went out (so a restart before that publishes it again)
        message = publish_webhook_result(inp, report) if webhook else None
        store.finish(jid, "done", report=report.to_json(items=False), report_path=str(job_dir / "report" / "report.json"),
                     message=message)
    except (HubauditError, InputError) as e:
        store.finish(jid, "error", message=str(e))
    except JobTimeout:
        store.finish(jid, "error", message=f"stopped after {JOB_TIMEOUT_S / 60:.0f} minutes, this Space's limit for "
                                           "one audit (fewer specs, or `hubaudit audit` on your own machine)")
    except Exception as e:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
        log.error("job %s failed:\n%s", jid, traceback.format_exc())
        store.finish(jid, "error", message=f"The audit stopped on an internal error ({type(e).__name__}: "
                                           f"{str(e).splitlines()[0] if str(e) else ''}).")


def _warm_up() -> None:
    """Import what the first audit needs while nobody waits (a few seconds on a small CPU Space)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401

        import hubaudit.metrics  # noqa: F401
        import hubaudit.modeling  # noqa: F401
        import rouge_score.rouge_scorer  # noqa: F401  (several seconds: nltk)
        import transformers.models.llama.modeling_llama  # noqa: F401  (the commonest architecture)
        from hubaudit.attacks import all_attacks

        all_attacks()
    except Exception:  # noqa: BLE001 - the audit reports any real problem
        log.debug("warm-up failed", exc_info=True)


def worker_loop(stop: threading.Event | None = None) -> None:
    """Run queued jobs one at a time, forever (or until ``stop`` is set). Nothing that goes wrong outside
    an audit ends the loop: it is logged, and the loop goes on after a pause."""
    _warm_up()
    while stop is None or not stop.is_set():
        try:
            job = store.claim_next()
            if job is None:
                wake.wait(2.0)
                wake.clear()
                continue
        except Exception:  # noqa: BLE001 - the worker must survive (a locked database, a full disk, a bug)
            log.error("the worker recovered from an error:\n%s", traceback.format_exc())
            time.sleep(POLL_SECONDS)
            continue
        try:  # the job is claimed ("running"): whatever happens now, it ends in a final state
            try:
                evict_disk()
            except Exception:  # noqa: BLE001 - a failed eviction does not stop the audit
                log.error("evicting disk failed:\n%s", traceback.format_exc())
            run_job(job)
        except Exception:  # noqa: BLE001
            log.error("the worker recovered from an error:\n%s", traceback.format_exc())
            try:
                if (store.get(job["id"]) or {}).get("state") == "running":
                    store.finish(job["id"], "error", message="the Space failed outside the audit; try again")
            except Exception:  # noqa: BLE001
                log.error("could not mark job %s as failed:\n%s", job["id"], traceback.format_exc())
            time.sleep(POLL_SECONDS)


UPLOAD_GRACE_S = 3600  # an upload younger than this is never evicted (its job may be being queued)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def evict_disk(budget: int | None = None, hub_cache: str | Path | None = None) -> list[str]:
    """Keep the Hub cache, the job folders, uploads and download copies under ``budget`` bytes together,
    deleting the least recently used first: finished jobs' folders and uploads (their results stay in the
    job database), download copies, and Hub cache repositories. Called before each job (no audit runs).
    Returns what it deleted."""
    import shutil

    from huggingface_hub import constants, scan_cache_dir

    budget = MAX_DISK_BYTES if budget is None else budget
    hub_cache = Path(hub_cache or constants.HF_HUB_CACHE)
    live = store.list(("queued", "running"), limit=1_000_000)
    active = {j["id"] for j in live}
    active_uploads = {j["inputs"].get("upload_dir") for j in live}
    items: list[tuple[float, int, str, object]] = []  # (last used, bytes, label, how to delete)
    for folder, skip in ((DATA / "jobs", active), (DATA / "uploads", None), (downloads_dir(), active),
                         (GRADIO_TEMP, None)):  # Gradio's own uploads and served files count too
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if (skip is not None and p.name in skip) or str(p) in active_uploads:
                continue
            mtime = p.stat().st_mtime
            if folder in (DATA / "uploads", GRADIO_TEMP) and time.time() - mtime < UPLOAD_GRACE_S:
                continue  # written moments ago: its job row may not exist yet
            items.append((mtime, _tree_bytes(p), str(p), p))
    try:
        info = scan_cache_dir(hub_cache) if hub_cache.is_dir() else None
    except Exception:  # noqa: BLE001 - a cache huggingface_hub cannot read is left alone
        info = None
    for repo in (info.repos if info else []):
        items.append((repo.last_accessed, repo.size_on_disk, f"hub:{repo.repo_id}", repo))
    total = sum(i[1] for i in items)
    deleted = []
    for last, size, label, what in sorted(items, key=lambda i: i[0]):
        if total <= budget:
            break
        try:
            if isinstance(what, Path):
                shutil.rmtree(what) if what.is_dir() else what.unlink()
            else:
                info.delete_revisions(*[r.commit_hash for r in what.revisions]).execute()
        except OSError:
            continue
        total -= size
        deleted.append(label)
    if deleted:
        log.info("freed disk (budget %.1f GiB): %s", budget / 2**30, ", ".join(deleted))
    return deleted
