"""The audit in the model card: one marked section in the text, one marked ``model-index`` entry in the
metadata, everything else byte for byte as it was; published as a Hub pull request (ours reused).

The card is edited as text, not parsed and re-dumped, so nobody's formatting, comments or key order
change: the prose section sits between ``<!-- hubaudit:start -->`` and ``<!-- hubaudit:end -->``, and the
``model-index`` entry between the YAML comments ``# hubaudit:start`` and ``# hubaudit:end``. Running it
again replaces exactly those two spans.

Publishing uses ``HfApi.create_commit`` (which honours ``HF_ENDPOINT``), not ``ModelCard.push_to_hub``
(which validates against a fixed Hub address).
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CardError
from .attacks import FULL_PRECISION
from .metrics.scores import keys as score_keys, label, notes
from .report import calibration_state, public_spec, public_summary, recovery_specs, regain_cells, safe_name, spec_label
from .results import AuditReport

SECTION_START, SECTION_END = "<!-- hubaudit:start -->", "<!-- hubaudit:end -->"
YAML_START, YAML_END = "# hubaudit:start", "# hubaudit:end"
PR_TITLE_PREFIX = "hubaudit: "
METHOD_URL = "https://arxiv.org/abs/2410.16454"
SOURCE_NAME = "hubaudit"  # model-index results and eval results entries hubaudit wrote carry this source name
EVAL_RESULTS_DIR = ".eval_results"


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def _inline_code(text) -> str:
    """Text from elsewhere (a Hub forget set's ``meta.json`` name) as one inline code span: no backtick to end
    it, no line break, no marker, at most 200 characters."""
    text = " ".join(str(text).replace("`", "'").replace("<!--", "<! --").split())
    return f"`{text[:200]}`"


def render_section(report: AuditReport) -> str:
    """The card section: verdict, table, thresholds, version, audited commit, method link."""
    inp, v = report.inputs, report.verdict
    model = inp["model"]
    specs = [FULL_PRECISION, *report.specs]
    metrics = [m for m in score_keys(shown="card") if any(m in c.metrics for c in report.cells)]
    ref = inp.get("reference")
    lines = [
        SECTION_START,
        "## Quantization audit (hubaudit)",
        "",
        f"**Verdict: {v.label.upper()}**: {public_summary(report)}.",
        "",
        "Unlearning can look complete in full precision and come back once the model is quantized "
        f"([Zhang et al., ICLR 2025]({METHOD_URL})). This model was audited at commit "
        f"`{model.get('sha') or model.get('identity', '')[:19]}` on the forget set {_inline_code(inp['forget']['name'])}"
        + ((f", against the original model `{ref['repo_id']}`" if ref.get("repo_id") else ", against a local original model")
           if ref else "") + ".",
        "",
        "| precision | " + " | ".join(label(m) for m in metrics) + " | regained (forget) [95% CI] | items up / down, p |",
        "|---|" + "---|" * (len(metrics) + 2),
    ]
    recovery = recovery_specs(report)  # prune, relearn: marked, so a card does not call them quantization
    for spec in specs:
        c = report.cell("model", spec)
        if c is None:
            continue
        if c.status != "ok":
            lines.append(f"| {public_spec(spec)} | {c.status} |" + " |" * (len(metrics) + 1))
            continue
        attack = " (recovery attack)" if spec in recovery else ""
        lines.append("| " + " | ".join([
            "full precision" if spec == FULL_PRECISION else f"`{public_spec(spec)}`{attack}",
            *(_fmt(c.metrics.get(m)) for m in metrics), *regain_cells(report.derived, spec),
        ]) + " |")
    st = report.derived.statistics
    lines += ["", _calibration_sentence(report)] if report.derived.get("calibration") else []
    lines += [
        "",
        f"Scores: ROUGE-L F1 x 100 with MUSE's definitions"
        + "".join(f"; {n}" for n in notes(metrics)) + ". Regained: the mean change of a forget metric against full "
        f"precision over the same items, with its 95% interval (paired bootstrap). Fragile means some quantization "
        + ("(or a recovery attack: pruning, a few fine-tuning steps) " if recovery else "") +
        f"brings back at least {v.threshold:g} points on average *and* more items go up than noise explains (one-sided "
        f"sign test, Holm-adjusted over {st.get('tests', 'the')} (spec, metric) pairs, alpha {st.get('alpha', 0.05):g}); "
        f"robust means every requested spec was evaluated and every interval ends below {v.threshold:g}; inconclusive "
        "means neither could be shown; incomplete means no verdict (some requested cell could not be evaluated). "
        f"Audited with hubaudit {report.hubaudit_version} on {report.created[:10]}; rerunning the audit replaces "
        "this section.",
        SECTION_END,
    ]
    return "\n".join(lines)


def _calibration_sentence(report: AuditReport) -> str:
    """Whether the verdict's figures were calibrated against a control model (:mod:`hubaudit.calibrate`)."""
    d = report.derived
    state, cal = calibration_state(d), d.get("calibration") or {}
    if state == "not calibrated" and not cal.get("control"):
        return ("Calibration: not calibrated. No control model was given, so a regained figure may include what the "
                "attack does to any model (knowledge a fine-tune teaches rather than recovers).")
    parts = []
    for spec, per in (d.get("calibrated_changes") or {}).items():
        m = max(per, key=lambda k: per[k]["mean"])
        ch = per[m]
        parts.append(f"`{public_spec(spec)}` {ch['mean']:+.1f} [{ch['ci'][0]:+.1f}, {ch['ci'][1]:+.1f}] {label(m)} "
                     f"(the control: {ch['control_mean']:+.1f}, counted {ch.get('control_counted', ch['control_mean']):+.1f})"
                     if ch["ci"][0] is not None else
                     f"`{public_spec(spec)}` {ch['mean']:+.1f} {label(m)}")
    control = cal.get("control") or "a control model"
    return (f"Calibration: {state} against the control `{control}`, a model that never learned the forget set: the "
            "verdict counts only regain beyond what the same attack does to it, item by item. Beyond the control: "
            + ("; ".join(parts) or "none") + ".")


def _hub_forget_set(report: AuditReport) -> tuple[str, str | None] | None:
    """``(dataset id, commit)`` of the forget set when it is a Hub dataset, else None (a local or built-in
    set has no Hub id, and hubaudit never invents one)."""
    source = (report.inputs.get("forget") or {}).get("source") or ""
    if not source.startswith("hub:"):
        return None
    repo, _, rev = source[4:].partition("@")
    return repo, rev or None


def _card_scores(report: AuditReport) -> list[tuple[str, str, float]]:
    """``(spec, metric, value rounded to 2 decimals)`` of every finished cell of the audited model, the
    card's metrics only, full precision first."""
    out = []
    for spec in [FULL_PRECISION, *report.specs]:
        c = report.cell("model", spec)
        if c is not None and c.status == "ok":
            out += [(spec, m, round(c.metrics[m], 2)) for m in score_keys(shown="card") if m in c.metrics]
    return out


def model_index_entry(report: AuditReport) -> dict | None:
    """One ``model-index`` element: a single result (task ``text-generation``, the forget set's Hub dataset
    with its ``revision``, split ``forget``) whose metrics carry the precision in their ``config`` and
    ``name``, so huggingface_hub's round trip (which merges results by task and dataset) keeps them apart;
    ``source.name: hubaudit`` is how hubaudit finds its entry again. None when the forget set is not a Hub
    dataset."""
    inp = report.inputs
    hub = _hub_forget_set(report)
    if hub is None:
        return None
    repo, rev = hub
    metrics = [{"type": m, "name": f"{label(m)} ({spec_label(spec)})", "config": public_spec(spec), "value": v,
                "verified": False} for spec, m, v in _card_scores(report)]
    if not metrics:
        return None
    dataset = {"type": repo, "name": inp["forget"]["name"], "split": "forget"}
    if rev:
        dataset["revision"] = rev
    result = {"task": {"type": "text-generation", "name": "Unlearning audit (hubaudit)"}, "dataset": dataset,
              "metrics": metrics, "source": {"name": SOURCE_NAME, "url": METHOD_URL}}
    return {"name": inp["model"].get("repo_id") or inp["model"]["name"], "results": [result]}


def eval_results_file(report: AuditReport) -> tuple[str, str] | None:
    """``(path in the repo, YAML text)`` of hubaudit's ``.eval_results/`` file, the format the Hub now shows
    (huggingface_hub's ``EvalResultEntry``): one entry per metric and precision, the precision in ``notes``.
    None when the forget set is not a Hub dataset."""
    import yaml
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    hub = _hub_forget_set(report)
    if hub is None:
        return None
    repo, rev = hub
    entries = [EvalResultEntry(dataset_id=repo, task_id=m, value=v, dataset_revision=rev, date=report.created or None,
                               source_url=METHOD_URL, source_name=SOURCE_NAME,
                               notes=f"{label(m)}, {spec_label(spec)} (hubaudit quantization audit)")
               for spec, m, v in _card_scores(report)]
    if not entries:
        return None
    name = safe_name(repo, "forget")
    text = yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False, allow_unicode=True, width=1000)
    return f"{EVAL_RESULTS_DIR}/hubaudit-{name}.yaml", text


# -- text surgery -----------------------------------------------------------------------------------
def split_card(text: str) -> tuple[str | None, str]:
    """(YAML front matter without its fences or None, the rest), found by huggingface_hub's own rule."""
    from .cardmeta import split_front_matter

    parts = split_front_matter(text)
    if parts is None:
        return None, text
    return parts[1], parts[3]


def _yaml_block(entry: dict, indent: str) -> str:
    import yaml

    dumped = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=1000)
    body = "".join(indent + line if line.strip() else line for line in dumped.splitlines(True))
    return f"{indent}{YAML_START}\n{body}{indent}{YAML_END}\n"


def _ours(result) -> bool:
    return isinstance(result, dict) and (result.get("source") or {}).get("name") == SOURCE_NAME


def _model_index_span(lines: list[str]) -> tuple[int, int] | None:
    """Lines ``[key, end)`` of the top-level ``model-index:`` block, or None."""
    key = next((i for i, l in enumerate(lines) if re.match(r"^model-index\s*:", l)), None)
    if key is None:
        return None
    if lines[key].split(":", 1)[1].strip() not in ("", "[]"):
        raise CardError("the card's model-index is written in flow style on one line; rewrite it as a block list "
                        "(one '- name:' per model) and run again")
    end = key + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t-#"):
        end += 1
    while end > key + 1 and not lines[end - 1].strip():  # keep blank lines after the block where they were
        end -= 1
    return key, end


def _update_yaml(front: str, entry: dict | None) -> str:
    """The front matter with our model-index element in place (``entry`` None: ours removed). Found by our
    YAML comment markers, or, when a tool re-wrote the card through huggingface_hub (comments gone, results
    merged), by content: every result whose ``source.name`` is hubaudit's."""
    from .cardmeta import CardMetadataError, safe_yaml

    lines = front.splitlines(True)
    start = next((i for i, l in enumerate(lines) if l.strip() == YAML_START), None)
    if start is not None:
        end = next((i for i in range(start, len(lines)) if lines[i].strip() == YAML_END), None)
        if end is None:
            raise CardError(f"the card's metadata has '{YAML_START}' without '{YAML_END}'; repair it by hand")
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        block = _yaml_block(entry, indent) if entry is not None else ""
        return "".join(lines[:start]) + block + "".join(lines[end + 1:])
    span = _model_index_span(lines)
    try:
        current = (safe_yaml(front) or {}).get("model-index") if front.strip() else None
    except CardMetadataError as e:
        raise CardError(f"{e}; repair the card's metadata first") from None
    if span is not None and isinstance(current, list) and any(
            _ours(r) for el in current if isinstance(el, dict) for r in (el.get("results") or [])):
        # re-written by another tool: drop our results wherever they ended up, re-dump the block
        import yaml

        kept = []
        for el in current:
            if not isinstance(el, dict):
                kept.append(el)
                continue
            results = [r for r in (el.get("results") or []) if not _ours(r)]
            if results or "results" not in el:
                kept.append({**el, "results": results} if "results" in el else el)
        key, end = span
        body = yaml.safe_dump(kept, sort_keys=False, allow_unicode=True, width=1000) if kept else ""
        block = _yaml_block(entry, "") if entry is not None else ""
        if not kept and entry is None:
            return "".join(lines[:key]) + "".join(lines[end:])
        return "".join(lines[:key]) + "model-index:\n" + body + block + "".join(lines[end:])
    if entry is None:
        return front
    if span is None:
        sep = "" if not front or front.endswith("\n") else "\n"
        return front + sep + "model-index:\n" + _yaml_block(entry, "")
    key, end = span
    items = [l for l in lines[key + 1:end] if l.lstrip().startswith("- ")]
    indent = items[0][: len(items[0]) - len(items[0].lstrip())] if items else ""
    head = lines[key] if lines[key].split(":", 1)[1].strip() == "" else "model-index:\n"
    return "".join(lines[:key]) + head + "".join(lines[key + 1:end]) + _yaml_block(entry, indent) + "".join(lines[end:])


_FENCE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})")


def _section_span(body: str) -> tuple[int, int] | None:
    """Where our section is: the one ``SECTION_START`` ... ``SECTION_END`` pair outside fenced code blocks
    (a card that shows our markers in a code example keeps them). None when there is none; CardError
    when the markers are not exactly one ordered pair."""
    starts, ends, fence, pos = [], [], None, 0
    for line in body.splitlines(True):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line[m.end():].strip():
                fence = None  # CommonMark: the same character, at least as many, nothing after
        elif fence is None:
            # our markers are written at the start of their own lines: one indented 4 spaces or more (an
            # indented code block) or inside a line (inline code, prose) is someone's example, not ours
            text = line.lstrip(" ")
            indent = len(line) - len(text)
            if indent <= 3 and text.startswith(SECTION_START):
                starts.append(pos + indent)
            if indent <= 3 and text.rstrip().endswith(SECTION_END) and (text.startswith(SECTION_END)
                                                                         or text.startswith(SECTION_START)):
                ends.append(pos + indent + text.rstrip().rindex(SECTION_END) + len(SECTION_END))
        pos += len(line)
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise CardError(f"the card should hold one '{SECTION_START}' followed by one '{SECTION_END}' (it has "
                        f"{len(starts)} and {len(ends)}{', in the wrong order' if starts and ends and ends[0] < starts[0] else ''}); "
                        "repair them by hand")
    return starts[0], ends[0]


def update_card(text: str, report: AuditReport) -> str:
    """The card with our section and our model-index entry (added, or replaced when present). A card
    written with CRLF line endings keeps them."""
    if "\r\n" in text and "\n" not in text.replace("\r\n", ""):
        return _update_card(text.replace("\r\n", "\n"), report).replace("\n", "\r\n")
    return _update_card(text, report)


def _update_card(text: str, report: AuditReport) -> str:
    from .cardmeta import CardMetadataError, safe_yaml, split_front_matter

    front, body = split_card(text)
    entry = model_index_entry(report)
    new_front = _update_yaml(front or "", entry)
    try:
        old_meta = safe_yaml(front) if front else {}
        new_meta = safe_yaml(new_front) if new_front.strip() else {}
    except CardMetadataError as e:
        raise CardError(f"{e}; repair the card's metadata first") from None
    old_meta = old_meta or {}
    new_meta = {} if new_meta is None else new_meta
    if not isinstance(new_meta, dict) or {k: v for k, v in new_meta.items() if k != "model-index"} != \
            {k: v for k, v in old_meta.items() if k != "model-index"}:
        raise CardError("updating the card's metadata would change other keys; please report this card")
    section = render_section(report)
    span = _section_span(body)
    if span is not None:
        a, b = span
        body = body[:a] + section + body[b:]
    else:
        sep = "" if not body else ("\n" if body.endswith("\n\n") else "\n\n" if body.endswith("\n") else "\n\n\n")
        body = body + sep + section + "\n"
    if front is None:
        if not new_front.strip():  # nothing to put in metadata (a local forget set): the card gets none
            return body
        return f"---\n{new_front}---\n" + ("" if body.startswith("\n") else "\n") + body
    opening, _, closing, _ = split_front_matter(text)
    return opening + new_front + closing + body


def card_diff(old: str, new: str, name: str = "README.md") -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}"))


# -- the Hub ----------------------------------------------------------------------------------------
@dataclass
class CardResult:
    card: str
    diff: str
    path: Path | None = None
    pr_url: str | None = None
    pr_num: int | None = None
    commit_url: str | None = None
    reused_pr: bool = False


def _check_report_matches(report: AuditReport, repo_id: str) -> None:
    audited = report.inputs["model"].get("repo_id")
    if audited != repo_id:
        raise CardError(f"the report is for '{audited or report.inputs['model']['name']}', not '{repo_id}'; "
                        f"give the report of an audit of {repo_id}")


def _current_card(api, repo_id: str, revision: str = "main") -> tuple[str, str]:
    """``(README.md's text, the commit it was read at)``: the commit is passed on as ``parent_commit``, so a
    card changed on the Hub meanwhile is never overwritten."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as he

    from .source import hub_errors

    with hub_errors(repo_id, revision):
        sha = api.model_info(repo_id, revision=revision).sha
        try:
            path = hf_hub_download(repo_id, "README.md", revision=sha, token=api.token)
        except he.RemoteEntryNotFoundError:
            return "", sha
    return Path(path).read_text(encoding="utf-8"), sha


@contextlib.contextmanager
def _changed_meanwhile(repo_id: str):
    """A commit on ``main`` between reading the card and writing it (HTTP 412): a one-line error, nothing
    overwritten."""
    from huggingface_hub import errors as he

    try:
        yield
    except he.HfHubHTTPError as e:
        if getattr(getattr(e, "response", None), "status_code", None) == 412:
            raise CardError(f"the card of '{repo_id}' changed on the Hub while hubaudit was writing it; run the same "
                            "command again to write into the new card") from None
        raise


def find_our_pr(api, repo_id: str) -> int | None:
    """Our open pull request on ``repo_id`` (opened by this token's user, titled by hubaudit), if any."""
    from .source import hub_errors

    with hub_errors(repo_id):
        user = api.whoami()["name"]
        for d in api.get_repo_discussions(repo_id, author=user, discussion_type="pull_request",
                                          discussion_status="open"):
            if d.title.startswith(PR_TITLE_PREFIX):
                return d.num
    return None


def publish_card(report: AuditReport, repo_id: str, *, token: str | None = None, pr: bool = True,
                 dry_run: bool = False, out: Path | None = None) -> CardResult:
    """Update ``repo_id``'s card with ``report``: write it to ``out``; unless ``dry_run``, push it as a
    pull request (our open one is reused) or, with ``pr=False``, straight to ``main``.

    Returns:
        a :class:`CardResult` with the new card, its diff against ``main``'s and the PR link.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .source import hub_errors

    _check_report_matches(report, repo_id)
    api = HfApi(token=token)
    old, base_sha = _current_card(api, repo_id)
    new = update_card(old, report)
    res = CardResult(card=new, diff=card_diff(old, new))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(new, encoding="utf-8")
        res.path = out
    if dry_run or new == old:
        return res
    v = report.verdict
    title = f"{PR_TITLE_PREFIX}quantization audit ({v.label})"
    description = (f"{public_summary(report)}.\n\nThis pull request adds (or updates) the section *Quantization audit "
                   "(hubaudit)* "
                   f"and hubaudit's `model-index` entry, and hubaudit's file in `{EVAL_RESULTS_DIR}/` (the Hub's "
                   f"evaluation results format) when the forget set is a Hub dataset; nothing else in the card "
                   f"changes. Opened by hubaudit {report.hubaudit_version}; running the audit again updates this "
                   "pull request.")
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=new.encode("utf-8"))]
    evals = eval_results_file(report)
    if evals is not None:  # the format the Hub now shows on the model page and in benchmark leaderboards
        ops.append(CommitOperationAdd(path_in_repo=evals[0], path_or_fileobj=evals[1].encode("utf-8")))
    with hub_errors(repo_id), _changed_meanwhile(repo_id):
        if not pr:
            info = api.create_commit(repo_id, ops, commit_message=title, commit_description=description,
                                     parent_commit=base_sha)
        else:
            num = find_our_pr(api, repo_id)
            if num is None:
                info = api.create_commit(repo_id, ops, commit_message=title, commit_description=description,
                                         create_pr=True, parent_commit=base_sha)
            else:
                info = api.create_commit(repo_id, ops, commit_message=title, revision=f"refs/pr/{num}")
                res.reused_pr = True
                res.pr_num = num
    res.commit_url = info.commit_url
    res.pr_url = info.pr_url or (f"{api.endpoint}/{repo_id}/discussions/{res.pr_num}" if res.pr_num else None)
    res.pr_num = res.pr_num or info.pr_num
    return res


def update_local_card(report: AuditReport, model_dir: Path, out: Path) -> CardResult:
    """For a local model folder: write the updated card to ``out`` (the folder's README.md is not touched)."""
    src = Path(model_dir) / "README.md"
    old = src.read_text(encoding="utf-8") if src.is_file() else ""
    new = update_card(old, report)
    if Path(out).resolve() == src.resolve():
        raise CardError(f"--out {out} is the model's own README.md; write the updated card elsewhere and compare")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(new, encoding="utf-8")
    return CardResult(card=new, diff=card_diff(old, new), path=Path(out))
