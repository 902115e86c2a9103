"""The page (Gradio): the audit form and its handlers (queueing an audit, pre-filling from the model's card),
the live view of one job (queue, progress, table, plot, verdict, card section, download), and the
Leaderboard tab. Text from a stranger's card or dataset is escaped (``md_escape``) before it is shown."""

import os
import re

# settings first: the environment defaults it sets must be in place before gradio is imported
from settings import DATA, LEADERBOARD, MAX_JOBS_PER_VISITOR, POLL_SECONDS, env_ids, store, wake

import gradio as gr
import pandas as pd

from checks import (InputError, card_base_model, check_dataset, check_model, check_queue_room, hub_repo,
                    queue_full_message, upload_to_muse, visitor_key)
from publishing import download_copy, open_pr
from words import verdict_words

from hubaudit.metrics.scores import get as score_of, keys as score_keys, label
from hubaudit.report import md_escape  # (text from a stranger's card, escaped)

FORGET_CHOICES = ["Synthetic (built in)", "MUSE News", "MUSE Books", "Hub dataset", "Upload JSONL"]
FORGET_SOURCE = {"Synthetic (built in)": "synthetic", "MUSE News": "muse-news", "MUSE Books": "muse-books"}
# The scores the page shows: each metric declares it (Score.shown "space" for the table, "space_plot" for the plot)
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
    from hubaudit.attacks import all_attacks

    allowed = env_ids("HUBAUDIT_SPACE_BACKENDS")  # the operator may turn slow backends off (empty: all)
    ok, off = [], []
    for b in all_attacks("quantization"):  # pruning and training attacks are not offered here
        specs = SPEC_MENU.get(b.name, list(b.examples[:2]))
        reason = b.unavailable_reason()
        if reason is None and allowed and b.name not in allowed:
            reason = "turned off on this Space (too slow for its hardware)"
        for s in specs:
            (off.append((s, reason)) if reason else ok.append(s))
    return ok, off


# ---------------------------------------------------------------------------------------------------
# the result as tables and a plot


def _fmt(x, metric=""):
    if x is None:
        return ""
    s = score_of(metric)
    return f"{x:.{s.digits if s else 1}f}"


def table_frame(cells: list[dict], derived: dict | None = None) -> pd.DataFrame:
    from hubaudit.results import change_text, largest_change

    rows = []
    reg = (derived or {}).get("regained", {})
    table, plotted = score_keys(shown="space"), score_keys(shown="space_plot")
    for c in cells:
        m = c.get("metrics", {})
        r = reg.get(c["spec"], {}) if c["role"] == "model" else {}
        forget = [r[k] for k in plotted if k in r]
        best = largest_change(derived or {}, c["spec"]) if c["role"] == "model" else None
        rows.append({
            "model": {"model": "audited", "reference": "original", "retrain": "retrained"}.get(c["role"], c["role"]),
            "precision": "full precision" if c["spec"] == "fp" else c["spec"],
            "status": c["status"] if c["status"] == "ok" else f"{c['status']}: {c.get('reason') or ''}",
            **{label(k): _fmt(m.get(k), k) for k in table},
            "regained (forget)": change_text(best[1]) if best else f"{max(forget):+.1f}" if forget else "",
            "seconds": f"{c.get('seconds', 0):.1f}" + (" (stored)" if c.get("reused") else ""),
        })
    return pd.DataFrame(rows, columns=["model", "precision", "status", *(label(k) for k in table),
                                       "regained (forget)", "seconds"])


def plot_frame(cells: list[dict]) -> pd.DataFrame:
    rows = []
    for c in cells:
        if c["status"] != "ok" or c["role"] not in ("model", "reference"):
            continue
        who = "audited" if c["role"] == "model" else "original"
        for k in score_keys(shown="space_plot"):
            if k in c.get("metrics", {}):
                rows.append({"precision": "full precision" if c["spec"] == "fp" else c["spec"],
                             "score": round(c["metrics"][k], 2), "series": f"{label(k)} ({who})"})
    return pd.DataFrame(rows, columns=["precision", "score", "series"])


# ---------------------------------------------------------------------------------------------------
# the page's handlers


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
                ds = check_dataset(ds)  # pinned: the commit measured is the one downloaded
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
    jid, mine = store.add_limited(inputs, "ui", visitor, MAX_JOBS_PER_VISITOR)
    if jid is None:
        if inputs.get("upload_dir"):
            import shutil

            shutil.rmtree(inputs["upload_dir"], ignore_errors=True)
        return gr.update(), f"⚠️ {queue_full_message(mine)}"
    wake.set()
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


def render(job_id, seen):
    """Everything the page shows about one job; gr.skip() for all when nothing changed since ``seen``."""
    outs = 9  # status, progress, table, verdict, plot, card, download, pr row, seen
    job_id = (job_id or "").strip()
    if not job_id:
        return (*[gr.skip()] * (outs - 1), seen)
    job = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        key = f"{job_id}:missing"
        if key == seen:
            return (*[gr.skip()] * (outs - 1), seen)
        # never the typed text itself: ?job= is anyone's link, and the page renders Markdown
        shown = f"`{job_id}`" if JOB_ID.fullmatch(job_id) else "with that id"
        return (f"⚠️ There is no audit {shown} on this Space.", "", gr.skip(), "", gr.skip(), "",
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


JOB_ID = re.compile(r"[0-9a-f]{6,32}")  # what JobStore hands out (secrets.token_hex)


def load_job_from_url(request: gr.Request):
    job = (request.query_params.get("job") or "").strip() if request else ""
    return job if JOB_ID.fullmatch(job) else gr.skip()


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
