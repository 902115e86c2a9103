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

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CardError
from .quant import FULL_PRECISION
from .results import LABELS, VERDICT_METRICS, AuditReport, change_text, largest_change

SECTION_START, SECTION_END = "<!-- hubaudit:start -->", "<!-- hubaudit:end -->"
YAML_START, YAML_END = "# hubaudit:start", "# hubaudit:end"
PR_TITLE_PREFIX = "hubaudit: "
METHOD_URL = "https://arxiv.org/abs/2410.16454"
CARD_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "tofu_rouge_f", "tofu_rouge_r", "wmdp_acc", "mmlu_acc")


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def render_section(report: AuditReport) -> str:
    """The card section: verdict, table, thresholds, version, audited commit, method link."""
    inp, v = report.inputs, report.verdict
    model = inp["model"]
    specs = [FULL_PRECISION, *report.specs]
    metrics = [m for m in CARD_METRICS if any(m in c.metrics for c in report.cells)]
    ref = inp.get("reference")
    lines = [
        SECTION_START,
        "## Quantization audit (hubaudit)",
        "",
        f"**Verdict: {v.label.upper()}**: {v.summary}.",
        "",
        "Unlearning can look complete in full precision and come back once the model is quantized "
        f"([Zhang et al., ICLR 2025]({METHOD_URL})). This model was audited at commit "
        f"`{model.get('sha') or model.get('identity', '')[:19]}` on the forget set `{inp['forget']['name']}`"
        + (f", against the original model `{ref.get('repo_id') or ref['name']}`" if ref else "") + ".",
        "",
        "| precision | " + " | ".join(LABELS[m] for m in metrics) + " | regained (forget) [95% CI] | items up / down, p |",
        "|---|" + "---|" * (len(metrics) + 2),
    ]
    for spec in specs:
        c = report.cell("model", spec)
        if c is None:
            continue
        if c.status != "ok":
            lines.append(f"| {spec} | {c.status} |" + " |" * (len(metrics) + 1))
            continue
        found = largest_change(report.derived, spec)
        if found is not None:
            m, ch = found
            regain = f"{change_text(ch)} ({LABELS[m]})"
            moved = f"{ch['up']} / {ch['down']} of {ch['n']}, p = {ch['p_holm']:.2g}"
        else:
            reg = report.derived.get("regained", {}).get(spec, {})
            forget = [reg[m] for m in VERDICT_METRICS if m in reg]
            regain, moved = (f"{max(forget):+.1f}" if forget else "–"), "–"
        lines.append("| " + " | ".join([
            "full precision" if spec == FULL_PRECISION else f"`{spec}`",
            *(_fmt(c.metrics.get(m)) for m in metrics), regain, moved,
        ]) + " |")
    st = report.derived.get("statistics") or {}
    lines += [
        "",
        f"Scores: ROUGE-L F1 x 100 with MUSE's definitions. Regained: the mean change of a forget metric against full "
        f"precision over the same items, with its 95% interval (paired bootstrap). Fragile means some quantization "
        f"brings back at least {v.threshold:g} points on average *and* more items go up than noise explains (one-sided "
        f"sign test, Holm-adjusted over {st.get('tests', 'the')} (spec, metric) pairs, alpha {st.get('alpha', 0.05):g}); "
        f"robust means every interval ends below {v.threshold:g}; inconclusive means neither could be shown. "
        f"Audited with hubaudit {report.hubaudit_version} on {report.created[:10]}; rerunning the audit replaces "
        "this section.",
        SECTION_END,
    ]
    return "\n".join(lines)


def model_index_entry(report: AuditReport) -> dict:
    """One ``model-index`` element holding a result per metric and spec."""
    inp = report.inputs
    fs = inp["forget"]
    hub = fs.get("source", "")
    dataset_type = hub[4:].partition("@")[0] if hub.startswith("hub:") else f"hubaudit/{fs['name']}"
    results = []
    for spec in [FULL_PRECISION, *report.specs]:
        c = report.cell("model", spec)
        if c is None or c.status != "ok":
            continue
        precision = "full precision" if spec == FULL_PRECISION else spec
        metrics = [
            {"type": m, "name": f"{LABELS[m]} ({precision})", "value": round(c.metrics[m], 2), "verified": False}
            for m in CARD_METRICS if m in c.metrics
        ]
        if metrics:
            results.append({
                "task": {"type": "text-generation", "name": f"Unlearning audit, {precision}"},
                "dataset": {"type": dataset_type, "name": fs["name"], "split": "forget"},
                "metrics": metrics,
                "source": {"name": "hubaudit", "url": METHOD_URL},
            })
    name = inp["model"].get("repo_id") or inp["model"]["name"]
    return {"name": name, "results": results}


# -- text surgery -----------------------------------------------------------------------------------
_FRONT = re.compile(r"\A(---[ \t]*\r?\n)(.*?)(^---[ \t]*(?:\r?\n|\Z))", re.S | re.M)


def split_card(text: str) -> tuple[str | None, str]:
    """(YAML front matter without its fences or None, the rest)."""
    m = _FRONT.match(text)
    if not m:
        return None, text
    return m.group(2), text[m.end():]


def _yaml_block(entry: dict, indent: str) -> str:
    import yaml

    dumped = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=1000)
    body = "".join(indent + line if line.strip() else line for line in dumped.splitlines(True))
    return f"{indent}{YAML_START}\n{body}{indent}{YAML_END}\n"


def _update_yaml(front: str, entry: dict) -> str:
    lines = front.splitlines(True)
    start = next((i for i, l in enumerate(lines) if l.strip() == YAML_START), None)
    if start is not None:
        end = next((i for i in range(start, len(lines)) if lines[i].strip() == YAML_END), None)
        if end is None:
            raise CardError(f"the card's metadata has '{YAML_START}' without '{YAML_END}'; repair it by hand")
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        return "".join(lines[:start]) + _yaml_block(entry, indent) + "".join(lines[end + 1:])
    key = next((i for i, l in enumerate(lines) if re.match(r"^model-index\s*:", l)), None)
    if key is None:
        sep = "" if not front or front.endswith("\n") else "\n"
        return front + sep + "model-index:\n" + _yaml_block(entry, "")
    if lines[key].split(":", 1)[1].strip() not in ("", "[]"):
        raise CardError("the card's model-index is written in flow style on one line; rewrite it as a block list "
                        "(one '- name:' per model) and run again")
    end = key + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t-#"):
        end += 1
    while end > key + 1 and not lines[end - 1].strip():  # keep blank lines after the block where they were
        end -= 1
    items = [l for l in lines[key + 1:end] if l.lstrip().startswith("- ")]
    indent = items[0][: len(items[0]) - len(items[0].lstrip())] if items else ""
    head = lines[key] if lines[key].split(":", 1)[1].strip() == "" else "model-index:\n"
    return "".join(lines[:key]) + head + "".join(lines[key + 1:end]) + _yaml_block(entry, indent) + "".join(lines[end:])


def update_card(text: str, report: AuditReport) -> str:
    """The card with our section and our model-index entry (added, or replaced when present)."""
    import yaml

    front, body = split_card(text)
    entry = model_index_entry(report)
    new_front = _update_yaml(front or "", entry)
    try:
        old_meta = yaml.safe_load(front) if front else {}
        new_meta = yaml.safe_load(new_front)
    except yaml.YAMLError as e:
        raise CardError(f"the card's YAML metadata cannot be read ({str(e).splitlines()[0]}); repair it first") from None
    old_meta = old_meta or {}
    if not isinstance(new_meta, dict) or {k: v for k, v in new_meta.items() if k != "model-index"} != \
            {k: v for k, v in old_meta.items() if k != "model-index"}:
        raise CardError("updating the card's metadata would change other keys; please report this card")
    section = render_section(report)
    if SECTION_START in body:
        if SECTION_END not in body:
            raise CardError(f"the card has '{SECTION_START}' without '{SECTION_END}'; repair it by hand")
        a, b = body.index(SECTION_START), body.index(SECTION_END) + len(SECTION_END)
        body = body[:a] + section + body[b:]
    else:
        sep = "" if not body else ("\n" if body.endswith("\n\n") else "\n\n" if body.endswith("\n") else "\n\n\n")
        body = body + sep + section + "\n"
    if front is None:
        return f"---\n{new_front}---\n" + ("" if body.startswith("\n") else "\n") + body
    m = _FRONT.match(text)
    return m.group(1) + new_front + m.group(3) + body


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


def _current_card(api, repo_id: str, revision: str = "main") -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as he

    from .source import hub_errors

    with hub_errors(repo_id, revision):
        try:
            path = hf_hub_download(repo_id, "README.md", revision=revision, token=api.token)
        except he.RemoteEntryNotFoundError:
            return ""
    return Path(path).read_text(encoding="utf-8")


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
    old = _current_card(api, repo_id)
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
    description = (f"{v.summary}.\n\nThis pull request adds (or updates) the section *Quantization audit (hubaudit)* "
                   f"and hubaudit's `model-index` entry; nothing else in the card changes. Opened by hubaudit "
                   f"{report.hubaudit_version}; running the audit again updates this pull request.")
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=new.encode("utf-8"))]
    with hub_errors(repo_id):
        if not pr:
            info = api.create_commit(repo_id, ops, commit_message=title, commit_description=description)
        else:
            num = find_our_pr(api, repo_id)
            if num is None:
                info = api.create_commit(repo_id, ops, commit_message=title, commit_description=description,
                                         create_pr=True)
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
