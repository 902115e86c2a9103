"""hubaudit's Hugging Face Space: does an unlearned model stay unlearned once people quantize it?

A face over the library (``hubaudit.audit``, ``hubaudit.card``), not a second implementation:

- the page queues an audit (``space/jobs.py``, SQLite) and polls it: one worker thread runs one audit
  at a time, so visitors wait in a visible queue, can leave and come back with ``?job=ID``, and a
  restart loses no job;
- ``POST /webhooks/audit`` receives Hub webhooks: a push to ``main`` of a watched model queues an audit
  whose result goes out as a pull request (models that opted in) or a discussion, with the Space's token;
- "Open a pull request on this model's card" uses the signed-in visitor's own token, never the Space's.

Run it locally with ``python space/app.py`` (http://127.0.0.1:7860); see space/README.md for settings.

The code, by what it does (a module imports only those listed above it):

- ``jobs.py``: the job store (SQLite): the queue, each job's progress, cells and result;
- ``settings.py``: the environment variables, read once at start; the environment defaults set before gradio
  and huggingface_hub are imported (no telemetry, the Space's token never sent implicitly); what the others
  share: the data folder, the job store, the results store, the worker's wake-up event, the log;
- ``words.py``: the verdict in words, for the page and for a webhook audit's discussion;
- ``checks.py``: the checks before an audit is queued: Hub ids (never a path), public safetensors models, the
  model's size, the caps on uploads, Hub forget sets and each visitor's queued audits;
- ``publishing.py``: where results go: a webhook audit's pull request or discussion (the Space's token), the
  visitor's card pull request (their own token), the report to download (no server paths);
- ``webhooks.py``: ``POST /webhooks/audit`` and ``GET /jobs/ID``, which pushes are audited, and what a webhook
  audit reads (a card-only push, the original model);
- ``worker.py``: the worker thread: one audit at a time, its progress, the time limit, the disk budget;
- ``page.py``: the Gradio page: the form and its handlers, the live view of a job, the Leaderboard tab;
- ``app.py`` (this file): ``main()``, which starts the worker, the page and the webhook routes. The names of
  the modules above are also reachable here (``app.submit``, ``app.store``, ...).
"""

import logging
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# settings first: the environment defaults it sets (no telemetry; the Space's own token never sent implicitly)
# must be in place before gradio and huggingface_hub are imported
import settings  # noqa: E402, F401

import gradio as gr  # noqa: E402

# the Space's modules, and their names re-exported here for callers of this module
import checks  # noqa: E402, F401
import page  # noqa: E402, F401
import publishing  # noqa: E402, F401
import webhooks  # noqa: E402, F401
import worker  # noqa: E402, F401
import words  # noqa: E402, F401
from checks import (  # noqa: E402, F401
    InputError, card_base_model, check_dataset, check_model, check_queue_room, check_size, hub_repo, upload_to_muse,
    visitor_key)
from page import (  # noqa: E402, F401
    ALL, CSS, DEFAULT_UI_SPECS, FORGET_CHOICES, FORGET_SOURCE, LB_HEADERS, LB_TYPES, SPEC_MENU, URL_JS, backend_menu, board_frame, build_ui, load_job_from_url, plot_frame, prefill_from_card,
    read_board, render, show_board, submit, table_frame)
from publishing import download_copy, open_pr, public_report, publish_webhook_result  # noqa: E402, F401
from settings import (  # noqa: E402, F401
    DATA, DEVICE, GRADIO_TEMP, JOB_TIMEOUT_S, LEADERBOARD, MAX_DISK_BYTES, MAX_FORGET_BYTES, MAX_FORGET_ITEMS,
    MAX_ITEM_CHARS, MAX_JOBS_PER_VISITOR, MAX_MODEL_BYTES, MAX_UPLOAD_BYTES, MAX_UPLOAD_ITEMS, PAUSE_WORKER, POLL_SECONDS, PR_MODELS,
    RESULTS, WATCHED, WEBHOOK_FORGET, WEBHOOK_SECRET, WEBHOOK_SPECS, WEBHOOK_THRESHOLD, downloads_dir, log,
    space_token, store)
from webhooks import add_webhook_route, classify_webhook, only_card_changed, webhook_reference  # noqa: E402, F401
from worker import JobProgress, JobTimeout, evict_disk, forget_source, run_job, worker_loop  # noqa: E402, F401
from words import BACKEND_WORDS, spec_words, verdict_words  # noqa: E402, F401

from hubaudit.report import md_escape  # noqa: E402, F401  (text from a stranger's card, escaped: see page.py)


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
                                    blocked_paths=[str(DATA)], show_error=False, footer_links=[],
                                    max_file_size=MAX_UPLOAD_BYTES)  # larger uploads refused before they are stored
    add_webhook_route(app)
    print(f"hubaudit Space ready at {local_url} (data in {DATA}; webhooks "
          f"{'on' if WEBHOOK_SECRET else 'off: set WEBHOOK_SECRET'})", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
