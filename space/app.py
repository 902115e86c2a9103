"""hubaudit's Hugging Face Space: does an unlearned model stay unlearned once people quantize it?

A face over the library (``hubaudit.audit``, ``hubaudit.card``), not a second implementation:

- the page queues an audit (``space/jobs.py``, SQLite) and polls it: one worker thread runs one audit
  at a time, so visitors wait in a visible queue, can leave and come back with ``?job=ID``, and a
  restart loses no job;
- ``POST /webhooks/audit`` receives Hub webhooks: a push to ``main`` of a watched model queues an audit
  whose result goes out as a pull request (models that opted in) or a discussion, with the Space's token;
- "Open a pull request on this model's card" uses the signed-in visitor's own token, never the Space's.

Run it locally with ``python space/app.py`` (http://127.0.0.1:7860); see space/README.md for settings.
"""

import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The Space's own token (HF_TOKEN) is never sent unless a call passes it explicitly: a visitor's audit must not
# read what the Space's account can read (private models, datasets), and only webhook work uses it.
os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from jobs import JobStore  # noqa: E402

from hubaudit.report import md_escape  # noqa: E402  (text from a stranger's card, escaped)

log = logging.getLogger("hubaudit.space")

# ---------------------------------------------------------------------------------------------------
# settings (environment variables; on a Space: Settings -> Variables and secrets)


def _data_dir() -> Path:
    if os.environ.get("HUBAUDIT_SPACE_DATA"):
        return Path(os.environ["HUBAUDIT_SPACE_DATA"])
    if os.path.isdir("/data") and os.access("/data", os.W_OK):  # a Space's persistent storage
        return Path("/data/hubaudit")
    return Path.home() / ".cache" / "hubaudit" / "space"


def space_token() -> str | None:
    """The Space's own token (the HF_TOKEN secret): for webhook audits and their results only."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def _ids(var: str) -> set[str]:
    return {s.strip() for s in os.environ.get(var, "").split(",") if s.strip()}


DATA = _data_dir()
DATA.mkdir(parents=True, exist_ok=True)
DEVICE = os.environ.get("HUBAUDIT_SPACE_DEVICE", "auto")
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET") or None
WATCHED = _ids("HUBAUDIT_WATCH")  # models whose pushes to main are audited
PR_MODELS = _ids("HUBAUDIT_PR_MODELS")  # of those, the ones that opted in to pull requests
WEBHOOK_SPECS = os.environ.get("HUBAUDIT_WEBHOOK_SPECS", "cast:bf16,rtn:8,rtn:4,rtn:4:g128")
WEBHOOK_FORGET = os.environ.get("HUBAUDIT_WEBHOOK_FORGET", "synthetic")
WEBHOOK_THRESHOLD = float(os.environ.get("HUBAUDIT_WEBHOOK_THRESHOLD", "5"))
MAX_MODEL_BYTES = int(os.environ["HUBAUDIT_SPACE_MAX_MODEL_BYTES"]) if os.environ.get("HUBAUDIT_SPACE_MAX_MODEL_BYTES") else None
PAUSE_WORKER = os.environ.get("HUBAUDIT_SPACE_PAUSE_WORKER") == "1"  # tests: queue without running
MAX_UPLOAD_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_UPLOAD_BYTES", str(20 << 20)))
MAX_UPLOAD_ITEMS = int(os.environ.get("HUBAUDIT_SPACE_MAX_UPLOAD_ITEMS", "5000"))
MAX_FORGET_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_FORGET_BYTES", str(200 << 20)))  # a Hub forget set's files
MAX_FORGET_ITEMS = int(os.environ.get("HUBAUDIT_SPACE_MAX_FORGET_ITEMS", "20000"))
JOB_TIMEOUT_S = float(os.environ.get("HUBAUDIT_SPACE_JOB_TIMEOUT", "3600"))  # one audit's wall time, at most
MAX_JOBS_PER_VISITOR = int(os.environ.get("HUBAUDIT_SPACE_MAX_JOBS_PER_VISITOR", "2"))  # queued or running
MAX_DISK_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_DISK_BYTES", str(40 << 30)))  # Hub cache + jobs + uploads
POLL_SECONDS = float(os.environ.get("HUBAUDIT_SPACE_POLL", "1"))
# The Leaderboard tab: a public Hub dataset written by `hubaudit leaderboard publish` (read without a token)
LEADERBOARD = os.environ.get("HUBAUDIT_LEADERBOARD", "").strip()

store = JobStore(DATA / "jobs.sqlite")
RESULTS = DATA / "results.sqlite"
_wake = threading.Event()

FORGET_CHOICES = ["Synthetic (built in)", "MUSE News", "MUSE Books", "Hub dataset", "Upload JSONL"]
FORGET_SOURCE = {"Synthetic (built in)": "synthetic", "MUSE News": "muse-news", "MUSE Books": "muse-books"}
PLOT_METRICS = ("verbmem_f", "knowmem_f")
TABLE_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc")
# The specs offered on the page, per backend (bit widths people actually run).
SPEC_MENU = {
    "rtn": ["rtn:8", "rtn:4", "rtn:4:g128", "rtn:3"],
    "cast": ["cast:bf16", "cast:fp16"],
    "bnb": ["bnb:int8", "bnb:nf4", "bnb:fp4"],
    "gptq": ["gptq:8", "gptq:4:g128"],
    "awq": ["awq:4"],
    "hqq": ["hqq:8", "hqq:4"],
    "torchao": ["torchao:int8", "torchao:int4"],
    "gguf": ["gguf:Q8_0", "gguf:Q4_K_M", "gguf:Q4_0"],
    "quanto": ["quanto:int8", "quanto:int4"],
    "file": [],  # a published build names a file, not a checkbox: CLI/Python only for now
}
DEFAULT_UI_SPECS = ("cast:bf16", "rtn:8", "rtn:4")


def backend_menu() -> tuple[list[str], list[tuple[str, str]]]:
    """(specs that run on this hardware, [(spec, why not)] for the others), from hubaudit's registry."""
    from hubaudit.quant.base import all_backends

    allowed = _ids("HUBAUDIT_SPACE_BACKENDS")  # the operator may turn slow backends off (empty: all)
    ok, off = [], []
    for b in all_backends():
        if getattr(b, "kind", "quantization") != "quantization":  # recovery attacks are not offered here
            continue
        specs = SPEC_MENU.get(b.name, list(b.examples[:2]))
        reason = b.unavailable_reason()
        if reason is None and allowed and b.name not in allowed:
            reason = "turned off on this Space (too slow for its hardware)"
        for s in specs:
            (off.append((s, reason)) if reason else ok.append(s))
    return ok, off


# ---------------------------------------------------------------------------------------------------
# words for a model publisher

LABELS = {"verbmem_f": "VerbMem forget", "knowmem_f": "KnowMem forget", "knowmem_r": "KnowMem retain",
          "mia_auc": "MIA AUC", "privleak": "PrivLeak"}
KNOWLEDGE = {"verbmem_f": "verbatim memory of the forget texts (VerbMem)",
             "knowmem_f": "answers about the forget set (KnowMem)"}
BACKEND_WORDS = {"rtn": "round-to-nearest", "bnb": "bitsandbytes", "gptq": "GPTQ", "awq": "AWQ", "hqq": "HQQ",
                 "torchao": "torchao", "gguf": "llama.cpp GGUF", "quanto": "quanto"}


def spec_words(spec: str) -> str:
    parts = spec.split(":")
    backend, args = parts[0], parts[1:]
    if backend == "cast":
        return f"a cast to {args[0] if args else '?'} (`{spec}`)"
    bits = next((a for a in args if a.isdigit()), None)
    name = BACKEND_WORDS.get(backend, backend)
    if bits:
        return f"{bits}-bit {name} (`{spec}`)"
    return f"{name} {' '.join(args)} (`{spec}`)"


def _interval(ch: dict | None) -> str:
    ci = (ch or {}).get("ci") or [None, None]
    return f" (95% interval {ci[0]:+.1f} to {ci[1]:+.1f})" if ci[0] is not None else ""


def verdict_words(report: dict) -> str:
    """The verdict as a paragraph, derived from the report (never hard-coded figures), with the interval
    and the p-value beside every figure."""
    v, d = report["verdict"], report.get("derived", {})
    cells = {(c["role"], c["spec"]): c for c in report["cells"]}
    fp = cells.get(("model", "fp"), {}).get("metrics", {})
    t = v["threshold"]
    spec, m, x = v.get("worst_spec"), v.get("worst_metric"), v.get("max_regained")
    ch = (d.get("changes") or {}).get(spec, {}).get(m) if spec else None
    moved = (f" {v['up']} of {v['n_items']} items went up and {v['down']} down (p = {v['p_value']:.2g} after "
             f"correcting for the {v.get('tests')} comparisons made)." if v.get("p_value") is not None else "")
    label = v["label"]
    if label == "fragile":
        q = cells.get(("model", spec), {}).get("metrics", {}).get(m)
        text = (f"**Fragile.** Quantizing this model with {spec_words(spec)} brings back {x:.1f} points of "
                f"{KNOWLEDGE.get(m, LABELS.get(m, m))} on the forget set{_interval(ch)}"
                + (f" ({fp[m]:.1f} in full precision, {q:.1f} quantized)" if m in fp and q is not None else "")
                + f"; the threshold is {t:g}.{moved} The model only hides the knowledge: whoever runs it quantized "
                "gets it back.")
        ret = d.get("retained", {})
        if m in ret.get("fp", {}) and m in ret.get(spec, {}):
            text += (f" Against the original model it keeps {ret['fp'][m]:.0f}% of that knowledge in full precision "
                     f"and {ret[spec][m]:.0f}% under `{spec}`.")
    elif label == "not-unlearned":
        r = v.get("retained") or {}
        text = (f"**Not unlearned.** In full precision this model still keeps {r.get('value', 0):.0f}% of what the "
                f"original knows on {LABELS.get(r.get('metric'), r.get('metric'))} (95% interval "
                f"{r['ci'][0]:.0f}% to {r['ci'][1]:.0f}%, {r.get('n')} items): the unlearning removed little, so whether "
                "quantization brings knowledge back is not the question yet." if r.get("ci") else
                f"**Not unlearned.** {v.get('summary', '')}")
    elif label == "robust":
        tested = ", ".join(f"`{s}`" for s in report["inputs"].get("specs", []))
        text = (f"**Robust.** No quantization tested ({tested}) brought back {t:g} points or more of the forget "
                f"set's knowledge, with 95% confidence; the largest change was {x:+.1f} points of {LABELS.get(m, m)} "
                f"under {spec_words(spec)}{_interval(ch)}.")
    elif label == "inconclusive":
        need = v.get("items_needed")
        text = (f"**Inconclusive.** The largest open question: {spec_words(spec)} moved {LABELS.get(m, m)} by "
                f"{x:+.1f} points{_interval(ch)}, which neither clears the threshold of {t:g} nor rules it out.{moved}"
                + (f" About {need} items would decide it." if need else "")
                + " hubaudit does not call a model fragile on noise.")
    else:
        bad = [f"`{c['spec']}` ({c['status']}: {c.get('reason') or ''})" for c in report["cells"] if c["status"] != "ok"]
        text = f"**No verdict.** {v.get('summary', '')}" + (f". Cells that did not run: {'; '.join(bad)}" if bad else "")
    if "knowmem_r" in fp:
        text += f" Utility (KnowMem on the retain set) in full precision: {fp['knowmem_r']:.1f}."
    return text


def _fmt(x, metric=""):
    if x is None:
        return ""
    return f"{x:.3f}" if metric == "mia_auc" else f"{x:.1f}"


def table_frame(cells: list[dict], derived: dict | None = None) -> pd.DataFrame:
    from hubaudit.results import change_text, largest_change

    rows = []
    reg = (derived or {}).get("regained", {})
    for c in cells:
        m = c.get("metrics", {})
        r = reg.get(c["spec"], {}) if c["role"] == "model" else {}
        forget = [r[k] for k in PLOT_METRICS if k in r]
        best = largest_change(derived or {}, c["spec"]) if c["role"] == "model" else None
        rows.append({
            "model": {"model": "audited", "reference": "original", "retrain": "retrained"}.get(c["role"], c["role"]),
            "precision": "full precision" if c["spec"] == "fp" else c["spec"],
            "status": c["status"] if c["status"] == "ok" else f"{c['status']}: {c.get('reason') or ''}",
            **{LABELS[k]: _fmt(m.get(k), k) for k in TABLE_METRICS},
            "regained (forget)": change_text(best[1]) if best else f"{max(forget):+.1f}" if forget else "",
            "seconds": f"{c.get('seconds', 0):.1f}" + (" (stored)" if c.get("reused") else ""),
        })
    return pd.DataFrame(rows, columns=["model", "precision", "status", *(LABELS[k] for k in TABLE_METRICS),
                                       "regained (forget)", "seconds"])


def plot_frame(cells: list[dict]) -> pd.DataFrame:
    rows = []
    for c in cells:
        if c["status"] != "ok" or c["role"] not in ("model", "reference"):
            continue
        who = "audited" if c["role"] == "model" else "original"
        for k in PLOT_METRICS:
            if k in c.get("metrics", {}):
                rows.append({"precision": "full precision" if c["spec"] == "fp" else c["spec"],
                             "score": round(c["metrics"][k], 2), "series": f"{LABELS[k]} ({who})"})
    return pd.DataFrame(rows, columns=["precision", "score", "series"])


# ---------------------------------------------------------------------------------------------------
# checks before queueing (so a bad id gets its message at once, not after waiting in the queue)


class InputError(Exception):
    pass


def hub_repo(text: str) -> str | None:
    """The ``org/name`` of text written as a Hub id ``org/name[@revision]``, else None (a path, a bare name,
    anything else): what the Space ever sends to the Hub, never read from this machine."""
    from hubaudit.source import HUB_ID

    repo, at, rev = (text or "").strip().partition("@")
    return repo if "/" in repo and HUB_ID.match(repo) and (rev or not at) else None


def downloads_dir() -> Path:
    """Where per-job download copies live: a temporary folder outside the data folder."""
    import tempfile

    return Path(tempfile.gettempdir()) / "hubaudit-space-downloads"


def check_model(model_id: str) -> str:
    """The normalized ``org/name[@rev]``; raise InputError with a message a visitor understands."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as he

    model_id = (model_id or "").strip()
    repo, _, rev = model_id.partition("@")
    if not model_id:
        raise InputError("Enter a model id from the Hub, for example `org/my-unlearned-model` (or `org/name@revision`).")
    if hub_repo(model_id) is None:
        raise InputError(f"`{model_id}` is not a Hub model id: use `org/name` or `org/name@revision`.")
    try:
        info = HfApi(token=False).model_info(repo, revision=rev or None, files_metadata=True)
    except he.GatedRepoError:
        raise InputError(f"`{repo}` is gated on the Hub. This Space audits public models only; run "
                         f"`hubaudit audit {repo} --token ...` on your own machine instead.") from None
    except he.RepositoryNotFoundError:
        raise InputError(f"There is no public model `{repo}` on the Hub (check the spelling; private models "
                         f"cannot be audited here).") from None
    except he.RevisionNotFoundError:
        raise InputError(f"`{repo}` has no branch, tag or commit `{rev}`.") from None
    except Exception as e:  # noqa: BLE001 - the Hub is down, a proxy, ...
        raise InputError(f"The Hub could not be asked about `{repo}` ({type(e).__name__}); try again later.") from None
    if getattr(info, "gated", False):
        raise InputError(f"`{repo}` is gated on the Hub. This Space audits public models only; run "
                         f"`hubaudit audit {repo} --token ...` on your own machine instead.")
    files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    weights = {f: n for f, n in files.items() if f.endswith(".safetensors")}
    if not weights:
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
        if pickles:
            raise InputError(f"`{repo}` has only pickle weights (`{pickles[0]}`), which can run code when loaded. "
                             f"The Space loads safetensors only: ask the publisher for a safetensors upload.")
        raise InputError(f"`{repo}` has no model weights (`*.safetensors`): is it a transformers model?")
    if "config.json" not in files:
        raise InputError(f"`{repo}` has no config.json: it is not a transformers model repository.")
    check_size(repo, info.sha, sum(weights.values()), token=False)
    return f"{repo}@{info.sha}"  # pinned: the audit reads the commit that was checked, whatever is pushed later


def check_size(repo: str, sha: str, weight_bytes: int, token) -> None:
    """Refuse a model this Space cannot hold: the library's own estimate (the model and one quantized copy
    at the compute dtype: about 4.4x a bf16 checkpoint where it computes in float32, 2.2x where bf16 is
    native) against the memory there is."""
    from hubaudit.modeling import compute_itemsize, default_compute_dtype, estimate_memory_bytes

    stored = None
    try:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(repo, "config.json", revision=sha, token=token), encoding="utf-8") as f:
            cfg = json.load(f)
        stored = cfg.get("dtype") or cfg.get("torch_dtype")
    except Exception:  # noqa: BLE001 - unknown dtype: the estimate assumes 16-bit weights
        pass
    device = "cuda" if DEVICE in ("auto", "cuda") and _cuda() else "cpu"
    need = estimate_memory_bytes(weight_bytes, stored, compute_itemsize(device, stored), copies=2)
    limit = MAX_MODEL_BYTES if MAX_MODEL_BYTES is not None else _available_bytes()
    if limit is not None and need > limit:
        raise InputError(f"`{repo}` is too big for this Space's hardware: it needs about {need / 2**30:.1f} GiB "
                         f"(the model and one quantized copy, {default_compute_dtype(device, stored)}) "
                         f"and {limit / 2**30:.1f} GiB is available. Run `hubaudit audit {repo}` on a larger machine.")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _available_bytes() -> int | None:
    try:
        from hubaudit.modeling import available_memory

        import torch

        dev = "cuda" if DEVICE in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        return available_memory(dev)
    except Exception:  # noqa: BLE001
        return None


def card_base_model(model_id: str) -> str | None:
    """The card's ``base_model`` (to pre-fill the reference), or None."""
    from huggingface_hub import HfApi

    from hubaudit.source import base_model_of

    repo, _, rev = (model_id or "").strip().partition("@")
    if "/" not in repo:
        return None
    try:
        info = HfApi(token=False).model_info(repo, revision=rev or None)
    except Exception:  # noqa: BLE001 - check_model says what is wrong when the audit is asked for
        return None
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    card = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    return base_model_of(card)


def upload_to_muse(path: str, dest: Path) -> Path:
    """An uploaded JSONL as a MUSE-layout folder: a line with question/answer is a KnowMem item
    (``"split": "retain"`` for the retain set), one with prompt/gt a VerbMem passage, one with text an
    MIA text (``"split": "holdout"`` for the non-member texts)."""
    parts: dict[str, list] = {}
    name = Path(path).name
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"The uploaded file {name} is {size / 2**20:.1f} MiB; this Space takes at most "
                         f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB (run `hubaudit audit` on your own machine for more).")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"The uploaded file {name} is not UTF-8 text: upload a .jsonl file, one JSON object "
                         "per line.") from None
    items = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        items += 1
        if items > MAX_UPLOAD_ITEMS:
            raise InputError(f"The uploaded file {name} has more than {MAX_UPLOAD_ITEMS} items; this Space "
                             "takes at most that many (run `hubaudit audit` on your own machine for more).")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"Line {n} of the uploaded file is not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict):
            raise InputError(f"Line {n} of the uploaded file is not a JSON object.")
        split = row.get("split", "")
        if "question" in row and "answer" in row:
            key = "knowmem/retain_qa" if split == "retain" else "knowmem/forget_qa"
            parts.setdefault(key, []).append({"question": row["question"], "answer": row["answer"]})
        elif "prompt" in row and "gt" in row:
            parts.setdefault("verbmem/forget", []).append({"prompt": row["prompt"], "gt": row["gt"]})
        elif "text" in row:
            parts.setdefault("privleak/holdout" if split == "holdout" else "privleak/forget", []).append(
                {"text": row["text"]})
        else:
            raise InputError(f"Line {n} of the uploaded file has none of question+answer, prompt+gt or text.")
    if not parts:
        raise InputError("The uploaded file is empty.")
    dest.mkdir(parents=True, exist_ok=True)
    for rel, rows in parts.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / (rel + ".jsonl")).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (dest / "meta.json").write_text(json.dumps({"name": f"upload:{Path(path).name}"}), encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------------------
# the worker: one audit at a time


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
            forget=fs, specs=inp["specs"], threshold=float(inp["threshold"]), out=job_dir / "report",
            store=RESULTS, device=DEVICE, token=token,
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
        from hubaudit.quant.base import all_backends

        all_backends()
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
                _wake.wait(2.0)
                _wake.clear()
                continue
            evict_disk()
            run_job(job)
        except Exception:  # noqa: BLE001 - the worker must survive (a locked database, a full disk, a bug)
            log.error("the worker recovered from an error:\n%s", traceback.format_exc())
            time.sleep(POLL_SECONDS)


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
    for folder, skip in ((DATA / "jobs", active), (DATA / "uploads", None), (downloads_dir(), active)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if (skip is not None and p.name in skip) or str(p) in active_uploads:
                continue
            items.append((p.stat().st_mtime, _tree_bytes(p), str(p), p))
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


# ---------------------------------------------------------------------------------------------------
# the page's handlers


def visitor_key(request) -> str | None:
    """Who queued a job, for the per-visitor limit: a hash of the client address (the first hop of
    X-Forwarded-For behind the Space's proxy); never the address itself."""
    import hashlib

    if request is None:
        return None
    fwd = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip() if request.headers else ""
    host = fwd or (request.client.host if request.client else "")
    return hashlib.sha256(f"hubaudit:{host}".encode()).hexdigest()[:16] if host else None


def check_queue_room(visitor: str | None) -> None:
    if visitor is None:
        return
    mine = store.count_active(visitor)
    if mine >= MAX_JOBS_PER_VISITOR:
        raise InputError(f"You already have {mine} audit(s) queued or running; this Space takes at most "
                         f"{MAX_JOBS_PER_VISITOR} per visitor. Wait for one to finish (its page shows the progress).")


def check_dataset(ds: str) -> None:
    """Refuse a Hub forget set whose files are more than this Space downloads (MAX_FORGET_BYTES)."""
    import fnmatch

    from huggingface_hub import HfApi

    from hubaudit.source import DATASET_PATTERNS

    repo, _, rev = ds.partition("@")
    try:
        info = HfApi(token=False).dataset_info(repo, revision=rev or None, files_metadata=True)
    except Exception:  # noqa: BLE001 - not found or gated: the audit's own message says which, when it runs
        return
    size = sum(s.size or 0 for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in DATASET_PATTERNS))
    if size > MAX_FORGET_BYTES:
        raise InputError(f"The forget set `{repo}` is {size / 2**20:.0f} MiB; this Space downloads at most "
                         f"{MAX_FORGET_BYTES / 2**20:.0f} MiB of forget-set files (run `hubaudit audit` on your own "
                         "machine for more).")


def submit(model_id, reference, forget_kind, dataset_id, upload, specs, threshold, request: gr.Request = None):
    """Queue an audit; returns (job id, message)."""
    try:
        visitor = visitor_key(request)
        check_queue_room(visitor)
        offered = set(backend_menu()[0])
        if any(s not in offered for s in specs or ()):  # never a free-form spec (file: names a path on this server)
            raise InputError("Choose quantization specs from the list on the page.")
        model_id = check_model(model_id)  # org/name@sha: the commit that was checked is the one audited
        reference = (reference or "").strip()
        if reference:
            reference = check_model(reference)
        if not specs:
            raise InputError("Choose at least one quantization spec.")
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise InputError("The threshold must be a number of points.") from None
        if not threshold >= 0:
            raise InputError("The threshold must be a number of points, 0 or more.")
        inputs = {"model": model_id, "reference": reference or None, "specs": list(specs), "threshold": threshold}
        if forget_kind in FORGET_SOURCE:
            inputs["forget"] = FORGET_SOURCE[forget_kind]
        elif forget_kind == "Hub dataset":
            ds = (dataset_id or "").strip()
            if not _is_shorthand(ds) and hub_repo(ds) is None:
                raise InputError("Enter a Hub dataset id in the MUSE layout (for example `org/my-forget-set`) "
                                 "or a benchmark's name (`tofu-forget10`, `wmdp-bio`).")
            if not _is_shorthand(ds):
                check_dataset(ds)
            inputs["forget"] = ds
        elif forget_kind == "Upload JSONL":
            if not upload:
                raise InputError("Upload a .jsonl file, or choose another forget set.")
            import secrets

            folder = upload_to_muse(upload if isinstance(upload, str) else upload.name,
                                    DATA / "uploads" / secrets.token_hex(8))
            inputs["forget"], inputs["upload_dir"] = "upload", str(folder)
        else:
            raise InputError("Choose a forget set.")
    except InputError as e:
        return gr.update(), f"⚠️ {e}"
    inputs["visitor"] = visitor
    jid = store.add(inputs, kind="ui")
    _wake.set()
    return jid, f"Queued as audit `{jid}`. You can leave: open this page with `?job={jid}` to come back to it."


def _is_shorthand(source: str) -> bool:
    """A benchmark's name that the library's readers know (``tofu-forget10``, ``wmdp-bio`` ...)."""
    from hubaudit.forget import tofu, wmdp

    return bool(tofu.SHORTHAND.match(source) or wmdp.SHORTHAND.match(source))


def prefill_from_card(model_id, reference, forget_kind, dataset_id):
    """Once a model id is entered: the reference from the card's ``base_model``, and the forget set the
    card points to (``hubaudit.detect``), each only where the visitor has not chosen one yet."""
    skip = (gr.skip(), gr.skip(), gr.skip(), gr.skip())
    mid = (model_id or "").strip()
    if hub_repo(mid) is None:  # a Hub id only: never a path on this machine
        return skip
    ref_out, forget_out, ds_out, msg = skip
    if not (reference or "").strip():
        base = card_base_model(mid)
        if base:
            ref_out = base
    if forget_kind == FORGET_CHOICES[0] and not (dataset_id or "").strip():
        from hubaudit.detect import propose_for_model

        try:
            proposal = propose_for_model(mid)
        except Exception:  # noqa: BLE001 - the audit itself says what is wrong with the model id
            proposal = None
        if proposal:
            source, reason = proposal
            label = {v: k for k, v in FORGET_SOURCE.items()}.get(source)
            if label:
                forget_out = label
            else:
                forget_out, ds_out = "Hub dataset", gr.update(value=source, visible=True)
            msg = (f"Forget set from the model card: `{source}` ({md_escape(reason)}). Change it if it is not the "
                   "right one.")
    return ref_out, forget_out, ds_out, msg


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


def render(job_id, seen):
    """Everything the page shows about one job; gr.skip() for all when nothing changed since ``seen``."""
    outs = 9  # status, progress, table, verdict, plot, card, download, pr row, seen
    job_id = (job_id or "").strip()
    if not job_id:
        return (*[gr.skip()] * (outs - 1), seen)
    job = store.get(job_id)
    if job is None:
        key = f"{job_id}:missing"
        if key == seen:
            return (*[gr.skip()] * (outs - 1), seen)
        return (f"⚠️ There is no audit `{job_id}` on this Space.", "", gr.skip(), "", gr.skip(), "",
                gr.update(visible=False), gr.update(visible=False), key)
    key = f"{job_id}:{job['updated']}:{job.get('position')}"
    if key == seen:
        return (*[gr.skip()] * (outs - 1), seen)
    inp, state = job["inputs"], job["state"]
    head = f"**Audit `{job_id}`** of `{inp.get('model')}` ({', '.join(inp.get('specs', []))}): "
    progress = ""
    if state == "queued":
        status = head + f"waiting in the queue, position {job.get('position', '?')} of {store.queue_length()} (one audit runs at a time)."
    elif state == "running":
        status = head + "running."
        p = job["progress"]
        if p.get("cell"):
            cell = p["cell"]
            who = "original" if cell["role"] == "reference" else "audited model"
            prec = "full precision" if cell["spec"] == "fp" else cell["spec"]
            progress = (f"Now: {who}, {prec}" + (f", {p['metric']}" if p.get("metric") else "")
                        + (f": {p['done']} / {p['total']} items" if p.get("total") else "")
                        + f". Cells finished: {len(job['cells'])}.")
    elif state == "done":
        took = (job["finished"] or 0) - (job["started"] or 0)
        status = head + f"done in {took:.0f} s." + (f" {job['message']}" if job.get("message") else "")
    elif state == "skipped":
        status = head + f"skipped: {job.get('message')}."
    else:
        status = head + "stopped.\n\n⚠️ " + (job.get("message") or "unknown error")
    report = job.get("report")
    cells = report["cells"] if report else job["cells"]
    table = table_frame(cells, report["derived"] if report else None) if cells else gr.skip()
    if cells:
        frame = plot_frame(cells)
        # Gradio 6.31's native plots keep the legend of their first value unless told the series again, so a
        # series that appears later (the original model's cells) would have no legend entry.
        plot = gr.update(value=frame, colors_in_legend=list(dict.fromkeys(frame["series"])))
    else:
        plot = gr.skip()
    if report:
        from hubaudit.card import render_section
        from hubaudit.results import AuditReport

        verdict = verdict_words(report)
        card = render_section(AuditReport.from_json(report))
        download = gr.update(value=download_copy(job), visible=True)
        pr_row = gr.update(visible=bool((report["inputs"]["model"] or {}).get("repo_id")))
    else:
        verdict, card, download, pr_row = "", "", gr.update(visible=False), gr.update(visible=False)
    return status, progress, table, verdict, plot, card, download, pr_row, key


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


def load_job_from_url(request: gr.Request):
    job = (request.query_params.get("job") or "").strip() if request else ""
    return job if job else gr.skip()


# ---------------------------------------------------------------------------------------------------
# the page

CSS = """
.unavailable { color: var(--body-text-color-subdued); opacity: .6; }
.unavailable label { display: block; }
"""
URL_JS = """(job) => { if (job) { const u = new URL(window.location.href); u.searchParams.set('job', job);
  window.history.replaceState(null, '', u.toString()); } return job; }"""


def _oauth_possible() -> bool:
    """Sign-in works on a Space; locally Gradio mocks it with the machine's Hub login, if there is one."""
    if os.environ.get("SPACE_ID"):
        return True
    try:
        from huggingface_hub import get_token, whoami

        return bool(get_token()) and whoami().get("type") == "user"
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------------------------
# the leaderboard tab

ALL = "all"
LB_HEADERS = ["model", "commit", "method", "base model", "forget set", "verdict", "regained", "95% CI", "items", "p",
              "worst spec", "retained %", "utility", "report"]
LB_TYPES = ["markdown", "str", "str", "str", "str", "str", "number", "str", "number", "number", "str", "number",
            "number", "markdown"]


def read_board():
    """The published leaderboard (HUBAUDIT_LEADERBOARD), read without the Space's token."""
    from hubaudit.errors import HubauditError
    from hubaudit.leaderboard import read_leaderboard

    if not LEADERBOARD or hub_repo(LEADERBOARD) is None:
        raise InputError("No leaderboard is configured here (set HUBAUDIT_LEADERBOARD to a public Hub dataset written "
                         "by `hubaudit leaderboard publish`).")
    try:
        return read_leaderboard(LEADERBOARD, token=False)
    except HubauditError as e:
        raise InputError(f"The leaderboard `{LEADERBOARD}` cannot be read: {md_escape(e)}") from None


def board_frame(frame: pd.DataFrame, forget: str = ALL, verdict: str = ALL) -> pd.DataFrame:
    """The rows to show: filtered by forget set and verdict; names escaped; links only to Hub pages built here
    (the model at its audited commit, the report in the leaderboard's dataset)."""
    from huggingface_hub import constants

    if forget not in (None, ALL):
        frame = frame[frame["forget"] == forget]
    if verdict not in (None, ALL):
        frame = frame[frame["verdict"] == verdict]
    rows = []
    for r in frame.to_dict("records"):
        name, repo = md_escape(r["model"]), hub_repo(str(r["model"]))
        commit = str(r.get("commit") or "")
        if repo and re.fullmatch(r"[0-9a-f]{40}", commit):
            name = f"[{name}]({constants.ENDPOINT}/{repo}/tree/{commit})"
        report = str(r.get("report") or "")
        link = (f"[report]({constants.ENDPOINT}/datasets/{LEADERBOARD}/blob/main/{report}/report.md)"
                if re.fullmatch(r"reports/[A-Za-z0-9._-]+", report) else "")
        lo, hi = r.get("regained_low"), r.get("regained_high")
        ci = f"[{lo:+.1f}, {hi:+.1f}]" if pd.notna(lo) and pd.notna(hi) else ""
        rows.append([name, commit[:8], md_escape(r.get("method") or ""), md_escape(r.get("base_model") or ""),
                     md_escape(r["forget"]), r["verdict"], r.get("regained"), ci, r.get("n_items"), r.get("p_value"),
                     md_escape(r.get("worst_spec") or ""), r.get("retained"), r.get("utility"), link])
    return pd.DataFrame(rows, columns=LB_HEADERS)


def show_board(forget: str = ALL, verdict: str = ALL):
    """(message, table, forget-set choices, verdict choices) for the tab."""
    try:
        frame = read_board()
    except InputError as e:
        return str(e), pd.DataFrame(columns=LB_HEADERS), gr.update(), gr.update()
    forgets = [ALL, *sorted(frame["forget"].dropna().unique())]
    verdicts = [ALL, *sorted(frame["verdict"].dropna().unique())]
    forget = forget if forget in forgets else ALL
    verdict = verdict if verdict in verdicts else ALL
    shown = board_frame(frame, forget, verdict)
    msg = (f"{len(shown)} of {len(frame)} models from the dataset `{md_escape(LEADERBOARD)}` (written by `hubaudit sweep`"
           " and `hubaudit leaderboard publish`). Click a column header to sort.")
    return (msg, shown, gr.update(choices=forgets, value=forget), gr.update(choices=verdicts, value=verdict))


def build_ui() -> gr.Blocks:
    available, unavailable = backend_menu()
    with gr.Blocks(title="hubaudit: does the unlearning survive quantization?", analytics_enabled=False) as demo:
        gr.Markdown(
            "# hubaudit\n**Does an unlearned model stay unlearned when people run it quantized?** "
            "Unlearning can look complete in full precision and come back after 4-bit quantization "
            "([Zhang et al., ICLR 2025](https://arxiv.org/abs/2410.16454)). This Space quantizes a model several "
            "ways, measures how much of the forget set comes back (MUSE's VerbMem and KnowMem), and says whether "
            "the unlearning is fragile.")
        with gr.Tab("Audit", id="audit-tab"):
            with gr.Row():
                if _oauth_possible():
                    gr.LoginButton(elem_id="login")
                else:
                    gr.Markdown("Sign-in (for opening a pull request) is available when the app runs as a Space.")
            with gr.Row():
                with gr.Column(scale=3):
                    model = gr.Textbox(label="Unlearned model (Hub id, optionally @revision)",
                                       placeholder="org/my-unlearned-model@main", elem_id="model")
                    reference = gr.Textbox(label="Original model before unlearning (optional; from the card's base_model)",
                                           placeholder="org/original-model", elem_id="reference")
                    forget = gr.Radio(FORGET_CHOICES, value=FORGET_CHOICES[0], label="Forget set", elem_id="forget")
                    dataset = gr.Textbox(label="Hub dataset id (MUSE layout)", placeholder="org/my-forget-set",
                                         visible=False, elem_id="dataset")
                    upload = gr.File(label="JSONL: question+answer, prompt+gt or text per line", file_types=[".jsonl"],
                                     visible=False, elem_id="upload")
                with gr.Column(scale=2):
                    specs = gr.CheckboxGroup(available, value=[s for s in DEFAULT_UI_SPECS if s in available],
                                             label="Quantization (backend:bits) available on this hardware", elem_id="specs")
                    if unavailable:
                        items = "".join(f"<label><input type='checkbox' disabled> <code>{s}</code>: {why}</label>"
                                        for s, why in unavailable)
                        gr.HTML(f"<details class='unavailable' open><summary>Not available here</summary>{items}</details>",
                                elem_id="unavailable")
                    threshold = gr.Number(5, label="Threshold: points regained that make the model fragile",
                                          minimum=0, elem_id="threshold")
                    go = gr.Button("Audit", variant="primary", elem_id="audit")
            message = gr.Markdown(elem_id="message")
            job_box = gr.Textbox(label="Audit id (open this page with ?job=ID to come back)", elem_id="job")
            status = gr.Markdown(elem_id="status")
            progress = gr.Markdown(elem_id="progress")
            verdict = gr.Markdown(elem_id="verdict")
            table = gr.Dataframe(label="Results", interactive=False, elem_id="table", wrap=True)
            plot = gr.LinePlot(x="precision", y="score", color="series", label="Forget metrics by precision",
                               x_title="precision (full precision first)", y_title="ROUGE-L F1 x 100",
                               color_title="metric (model)", tooltip="all", elem_id="plot",
                               caption="Higher = more of the forget set is known. A line that rises from full precision "
                                       "is knowledge that quantization brings back; the original model's lines are "
                                       "marked (original).")
            with gr.Accordion("Model card section, as it will look", open=True):
                card = gr.Markdown(elem_id="card")
            download = gr.DownloadButton("Download report.json", visible=False, elem_id="download")
            with gr.Row(visible=False) as pr_row:
                pr_btn = gr.Button("Open a pull request on this model's card", elem_id="open-pr")
                pr_msg = gr.Markdown(elem_id="pr-message")
            seen = gr.State("")

        forget.change(lambda k: (gr.update(visible=k == "Hub dataset"), gr.update(visible=k == "Upload JSONL")),
                      forget, [dataset, upload], queue=False)
        # no loading overlay: the fields it may fill stay usable while the card is read
        for event in (model.blur, model.submit):
            event(prefill_from_card, [model, reference, forget, dataset], [reference, forget, dataset, message],
                  show_progress="hidden")
        go.click(submit, [model, reference, forget, dataset, upload, specs, threshold], [job_box, message],
                 concurrency_limit=None).then(None, job_box, None, js=URL_JS)
        views = [status, progress, table, verdict, plot, card, download, pr_row, seen]
        timer = gr.Timer(POLL_SECONDS)
        timer.tick(render, [job_box, seen], views, concurrency_limit=None, show_progress="hidden")
        job_box.change(render, [job_box, gr.State("")], views, concurrency_limit=None, show_progress="hidden")
        pr_btn.click(open_pr, [job_box], pr_msg)
        demo.load(load_job_from_url, None, job_box)

        with gr.Tab("Leaderboard", id="leaderboard-tab", elem_id="leaderboard-tab") as board_tab:
            board_msg = gr.Markdown(elem_id="board-message")
            with gr.Row():
                board_forget = gr.Dropdown([ALL], value=ALL, label="Forget set", elem_id="board-forget")
                board_verdict = gr.Dropdown([ALL], value=ALL, label="Verdict", elem_id="board-verdict")
                board_refresh = gr.Button("Refresh", elem_id="board-refresh", scale=0)
            board = gr.Dataframe(headers=LB_HEADERS, datatype=LB_TYPES, interactive=False, wrap=True,
                                 elem_id="board", label="Unlearned models under quantization")
        board_out = [board_msg, board, board_forget, board_verdict]
        for event in (board_tab.select, board_refresh.click, board_forget.input, board_verdict.input):
            event(show_board, [board_forget, board_verdict], board_out, show_progress="hidden")
    return demo


# ---------------------------------------------------------------------------------------------------
# webhooks


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
        _wake.set()
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


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    requeued = store.requeue_interrupted()
    if requeued:
        log.info("%d interrupted audit(s) back in the queue", requeued)
    if not PAUSE_WORKER:
        threading.Thread(target=worker_loop, name="hubaudit-worker", daemon=True).start()
    demo = build_ui()
    demo.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"],
                              font_mono=[gr.themes.Font("ui-monospace"), "monospace"])
    # No allowed_paths: the data folder (job and results databases, uploads, job folders) is never served;
    # downloads are per-job copies that Gradio serves from its cache (download_copy).
    app, local_url, _ = demo.launch(prevent_thread_lock=True, share=False, ssr_mode=False, theme=theme, css=CSS,
                                    blocked_paths=[str(DATA)], show_error=False, footer_links=[])
    add_webhook_route(app)
    print(f"hubaudit Space ready at {local_url} (data in {DATA}; webhooks "
          f"{'on' if WEBHOOK_SECRET else 'off: set WEBHOOK_SECRET'})", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
