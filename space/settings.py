"""The Space's settings and what its modules share.

Settings are environment variables (on a Space: Settings -> Variables and secrets), read once, when this
module is imported; space/README.md lists them. Shared: the data folder, the job store (``jobs.py``), the
results store, the event that wakes the worker when a job is queued, and the log.

Every entry point imports this module before anything else of the Space's (``app.py`` does so first): the
environment defaults below must be set before gradio and huggingface_hub (which hubaudit imports too) are
imported, since they read them at import.
"""

import logging
import os
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The Space's own token (HF_TOKEN) is never sent unless a call passes it explicitly: a visitor's audit must not
# read what the Space's account can read (private models, datasets), and only webhook work uses it.
os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# one text of a forget-set item, at most (the library refuses longer ones; the upload check says it at once)
os.environ.setdefault("HUBAUDIT_MAX_ITEM_CHARS", os.environ.get("HUBAUDIT_SPACE_MAX_ITEM_CHARS", "20000"))
# a Hub forget set's files, at most, checked against the pinned commit's sizes before anything is downloaded
os.environ.setdefault("HUBAUDIT_MAX_DATASET_BYTES", os.environ.get("HUBAUDIT_SPACE_MAX_FORGET_BYTES", str(200 << 20)))
# Gradio keeps every upload (and the files it serves) in its temp folder: a folder of ours, outside the data
# folder (which is never served) and counted in the disk budget (worker.evict_disk)
os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(__import__("tempfile").gettempdir(), "hubaudit-space-gradio"))

from jobs import JobStore  # noqa: E402

log = logging.getLogger("hubaudit.space")


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


def env_ids(var: str) -> set[str]:
    return {s.strip() for s in os.environ.get(var, "").split(",") if s.strip()}


DATA = _data_dir()
DATA.mkdir(parents=True, exist_ok=True)
DEVICE = os.environ.get("HUBAUDIT_SPACE_DEVICE", "auto")
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET") or None
WATCHED = env_ids("HUBAUDIT_WATCH")  # models whose pushes to main are audited
PR_MODELS = env_ids("HUBAUDIT_PR_MODELS")  # of those, the ones that opted in to pull requests
WEBHOOK_SPECS = os.environ.get("HUBAUDIT_WEBHOOK_SPECS", "cast:bf16,rtn:8,rtn:4,rtn:4:g128")
WEBHOOK_FORGET = os.environ.get("HUBAUDIT_WEBHOOK_FORGET", "synthetic")
WEBHOOK_THRESHOLD = float(os.environ.get("HUBAUDIT_WEBHOOK_THRESHOLD", "5"))
MAX_MODEL_BYTES = int(os.environ["HUBAUDIT_SPACE_MAX_MODEL_BYTES"]) if os.environ.get("HUBAUDIT_SPACE_MAX_MODEL_BYTES") else None
# queued audits run sequentially (``--sequential``: items drawn until the answer is known) when a job does not
# say; off by default, as the CLI's: measured on the demo world and the real SmolLM2 zoo (same labels, 23-33% of
# the tokens: docs/guide/sequential.md), but on a model that did unlearn its rounds cost CPU wall time close to a
# full audit's, and its report's intervals are the anytime-valid ones; turn it on for a queue of Hub models
SEQUENTIAL = os.environ.get("HUBAUDIT_SPACE_SEQUENTIAL") == "1"
PAUSE_WORKER = os.environ.get("HUBAUDIT_SPACE_PAUSE_WORKER") == "1"  # tests: queue without running
MAX_UPLOAD_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_UPLOAD_BYTES", str(20 << 20)))
MAX_UPLOAD_ITEMS = int(os.environ.get("HUBAUDIT_SPACE_MAX_UPLOAD_ITEMS", "5000"))
MAX_FORGET_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_FORGET_BYTES", str(200 << 20)))  # a Hub forget set's files
MAX_ITEM_CHARS = int(os.environ["HUBAUDIT_MAX_ITEM_CHARS"])  # one text of one item
GRADIO_TEMP = Path(os.environ["GRADIO_TEMP_DIR"])
MAX_FORGET_ITEMS = int(os.environ.get("HUBAUDIT_SPACE_MAX_FORGET_ITEMS", "20000"))
JOB_TIMEOUT_S = float(os.environ.get("HUBAUDIT_SPACE_JOB_TIMEOUT", "3600"))  # one audit's wall time, at most
MAX_JOBS_PER_VISITOR = int(os.environ.get("HUBAUDIT_SPACE_MAX_JOBS_PER_VISITOR", "2"))  # queued or running
MAX_DISK_BYTES = int(os.environ.get("HUBAUDIT_SPACE_MAX_DISK_BYTES", str(40 << 30)))  # Hub cache + jobs + uploads
POLL_SECONDS = float(os.environ.get("HUBAUDIT_SPACE_POLL", "1"))
# The Leaderboard tab: a public Hub dataset written by `hubaudit leaderboard publish` (read without a token)
LEADERBOARD = os.environ.get("HUBAUDIT_LEADERBOARD", "").strip()

store = JobStore(DATA / "jobs.sqlite")
RESULTS = DATA / "results.sqlite"
wake = threading.Event()  # set when a job is queued (the page, a webhook): the worker looks at once


def downloads_dir() -> Path:
    """Where per-job download copies live: a temporary folder outside the data folder."""
    import tempfile

    return Path(tempfile.gettempdir()) / "hubaudit-space-downloads"
