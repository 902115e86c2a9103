"""The leaderboard of a sweep: one row per audited model, ``leaderboard.parquet`` and ``leaderboard.md``,
and publishing both (with each model's report) to a Hub dataset that the Space's Leaderboard tab reads.

Columns (``COLUMNS``): the model and its commit, the unlearning method and the base model as the card
names them, the forget set, the full-precision forget scores, the spec that regains most with its
regain, 95% interval, items and Holm-adjusted p (the verdict's own figures, :class:`~hubaudit.results.Verdict`),
knowledge retained in full precision with its interval, utility (KnowMem retain), the verdict, the card's
pull request and the report's path. A model whose audit failed is a row with ``verdict = "error"`` and
its reason.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import HubauditError
from .attacks import FULL_PRECISION
from .metrics.scores import label, verdict_keys

COLUMNS = ("model", "commit", "method", "base_model", "forget", *(f"fp_{m}" for m in verdict_keys()),
           "worst_spec", "worst_metric", "regained", "regained_low", "regained_high", "n_items", "p_value",
           "retained", "retained_low", "retained_high", "utility", "verdict", "summary", "card_pr", "report",
           "model_url", "calibrated")
# Order of the verdicts in the table: the ones a reader must act on first.
VERDICT_ORDER = ("fragile", "not-unlearned", "inconclusive", "incomplete", "robust", "error")
# Unlearning methods a card may name in its tags (open-unlearning's and the papers' spellings), lower case.
METHODS = {"ga": "GA", "gradascent": "GA", "grad_ascent": "GA", "gradient-ascent": "GA", "graddiff": "GradDiff",
           "grad_diff": "GradDiff", "ga_gdr": "GA_GDR", "ga_klr": "GA_KLR", "npo": "NPO", "npo_gdr": "NPO_GDR",
           "npo_klr": "NPO_KLR", "simnpo": "SimNPO", "rmu": "RMU", "dpo": "DPO", "idkdpo": "IdkDPO", "idknll": "IdkNLL",
           "undial": "UNDIAL", "altpo": "AltPO", "task_vector": "TaskVector", "whp": "WHP", "sure": "SURE",
           "elm": "ELM", "rr": "RR", "satimp": "SatImp", "wga": "WGA", "cemu": "CE-U"}


class LeaderboardError(HubauditError):
    """The leaderboard cannot be read or published (no sweep output, no access)."""


def card_method(card: dict | None) -> str | None:
    """The unlearning method a model card names: ``unlearning_method``/``method`` in its metadata, else a
    known method among its tags (``npo``, ``rmu``, ``GradDiff``, ...); None when it names none."""
    from .cardmeta import card_strings

    for key in ("unlearning_method", "method"):
        v = card_strings(card, key)
        if v and v[0].strip():
            return v[0].strip()
    for tag in card_strings(card, "tags"):
        t = tag.strip().lower()
        if t in METHODS:
            return METHODS[t]
    return None


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def row_of(sweep_row) -> dict:
    """A leaderboard row (``COLUMNS``) of a :class:`~hubaudit.sweep.SweepRow`."""
    from .cardmeta import card_strings

    card = sweep_row.card or {}
    row = {c: None for c in COLUMNS}
    row.update(model=sweep_row.model.partition("@")[0] if sweep_row.sha else sweep_row.model, commit=sweep_row.sha,
               method=card_method(card), base_model=", ".join(card_strings(card, "base_model")) or None,
               forget=sweep_row.forget, card_pr=sweep_row.card_pr, report=sweep_row.report_dir)
    if sweep_row.sha:
        row["model_url"] = f"https://huggingface.co/{row['model']}/tree/{sweep_row.sha}"
    report = sweep_row.report
    if sweep_row.status != "ok" or report is None:
        row.update(verdict="error", summary=sweep_row.reason or "not audited")
        return row
    v, d = report.verdict, report.derived
    row["forget"] = report.inputs["forget"]["name"]
    fp = report.cell("model", FULL_PRECISION)
    for m in verdict_keys():
        row[f"fp_{m}"] = _num(fp.metrics.get(m)) if fp else None
    ci = v.ci or [None, None]
    row.update(worst_spec=v.worst_spec, worst_metric=v.worst_metric, regained=_num(v.max_regained),
               regained_low=_num(ci[0]), regained_high=_num(ci[1]), n_items=v.n_items, p_value=_num(v.p_value),
               verdict=v.label, summary=v.summary)
    kept = d.retained_ci.get(FULL_PRECISION) or {}
    m = v.worst_metric if v.worst_metric in kept else next((k for k in verdict_keys() if k in kept), None)
    if m is not None:
        r = kept[m]
        row.update(retained=_num(r["value"]), retained_low=_num(r["ci"][0]), retained_high=_num(r["ci"][1]))
    row["utility"] = _num(d.utility.get(FULL_PRECISION))
    from .report import calibration_state

    row["calibrated"] = calibration_state(d)  # against a control model (hubaudit.calibrate), or not
    return row


def _calibrated_mark(r: dict) -> str:
    state = r.get("calibrated")
    return f" ({state})" if state else ""


def _sort_key(r: dict):
    order = VERDICT_ORDER.index(r["verdict"]) if r["verdict"] in VERDICT_ORDER else len(VERDICT_ORDER)
    return order, -(r["regained"] if r["regained"] is not None else -math.inf), r["model"]


def render_markdown(rows: list[dict]) -> str:
    """``leaderboard.md``: the table a reader scans, fragile models first; names from strangers escaped."""
    from .report import md_escape

    def fmt(x, signed=False, digits=1):
        return "–" if x is None else (f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}")

    lines = ["# hubaudit leaderboard: does the unlearning survive quantization?", "",
             f"{len(rows)} models. Regained: the largest mean change of a forget metric under any spec against full "
             "precision, with its 95% paired bootstrap interval, items and Holm-adjusted sign-test p (the verdict's "
             "figures); retained: the unlearned model's share of the original's score in full precision; utility: "
             "KnowMem retain. Scores are x 100. A verdict marked (calibrated) counts only regain beyond what the same "
             "attack does to a control model that never learned the forget set; (not calibrated): no control.", "",
             "| model | commit | method | base | forget set | forget (full precision) | worst spec | regained [95% CI], "
             "items, p | retained | utility | verdict | card PR | report |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_sort_key):
        fp = ", ".join(f"{label(m)} {r[f'fp_{m}']:.1f}" for m in verdict_keys() if r.get(f"fp_{m}") is not None)
        if r["verdict"] == "error":
            reg = md_escape(r["summary"] or "")
        elif r["regained"] is None:
            reg = "–"
        else:
            reg = fmt(r["regained"], True)
            if r["regained_low"] is not None:
                reg += f" [{r['regained_low']:+.1f}, {r['regained_high']:+.1f}]"
            reg += f" {md_escape(label(r['worst_metric']))}, n = {r['n_items']}"
            if r["p_value"] is not None:
                reg += f", p = {r['p_value']:.2g}"
        ret = "–" if r["retained"] is None else f"{r['retained']:.0f}%" + (
            f" [{r['retained_low']:.0f}, {r['retained_high']:.0f}]" if r["retained_low"] is not None
            and r["retained_high"] is not None else "")
        model = md_escape(r["model"])
        if r["model_url"]:
            model = f"[{model}]({r['model_url']})"
        lines.append("| " + " | ".join([
            model, f"`{r['commit'][:8]}`" if r["commit"] else "–", md_escape(r["method"] or "–"),
            md_escape(r["base_model"] or "–"), md_escape(r["forget"]), fp or "–", md_escape(r["worst_spec"] or "–"), reg,
            ret, fmt(r["utility"]), f"**{r['verdict']}**" + _calibrated_mark(r), f"[PR]({r['card_pr']})" if r["card_pr"] else "–",
            f"[report]({r['report']}/report.md)" if r["report"] else "–"]) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(sweep_rows, out: Path) -> list[dict]:
    """Write ``leaderboard.parquet`` and ``leaderboard.md`` into ``out``; return the rows."""
    import pandas as pd

    rows = sorted((row_of(r) for r in sweep_rows), key=_sort_key)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["n_items"] = frame["n_items"].astype("Int64")
    frame.to_parquet(Path(out) / "leaderboard.parquet", index=False)
    (Path(out) / "leaderboard.md").write_text(render_markdown(rows), encoding="utf-8")
    return rows


DATASET_CARD = """---
configs:
- config_name: default
  data_files: leaderboard.parquet
tags:
- hubaudit
- unlearning
- leaderboard
---
"""


def publish_leaderboard(out: str | Path, repo: str, *, token: str | None = None, pr: bool | None = None) -> dict:
    """Push a sweep's ``leaderboard.parquet``, ``leaderboard.md`` (as the dataset card) and ``reports/`` to the
    Hub dataset ``repo``, in one commit. ``pr``: None decides by ownership (a pull request when the
    repository's namespace is not the token's user or one of its organizations; the repository is created
    when it is ours and missing).

    Returns:
        ``{"commit_url", "pr_url"}``.

    Raises:
        LeaderboardError: ``out`` holds no leaderboard; HubError: no access.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub import errors as he

    from .source import HUB_ID, hub_errors

    out = Path(out).expanduser()
    if not (out / "leaderboard.parquet").is_file():
        raise LeaderboardError(f"{out} holds no leaderboard.parquet; give the --out folder of a finished hubaudit sweep")
    if "/" not in repo or not HUB_ID.match(repo):
        raise LeaderboardError(f"--repo must be a Hub dataset id org/name, got '{repo}'")
    api = HfApi(token=token)
    namespace = repo.split("/")[0]
    with hub_errors(repo, repo_type="dataset"):
        me = api.whoami()
        ours = namespace == me.get("name") or namespace in {o.get("name") for o in me.get("orgs") or []}
        try:
            api.dataset_info(repo)
            exists = True
        except he.RepositoryNotFoundError:
            exists = False
        if not exists:
            if not ours:
                raise LeaderboardError(f"dataset '{repo}' does not exist and its namespace is not yours; ask its owner "
                                       "to create it, or publish to a dataset of your own")
            api.create_repo(repo, repo_type="dataset", exist_ok=True)
        use_pr = (not ours) if pr is None else pr
        ops = [CommitOperationAdd(name, data) for name, data in public_files(out).items()]
        info = api.create_commit(repo, ops, repo_type="dataset", create_pr=use_pr,
                                 commit_message="hubaudit: leaderboard of a sweep")
    return {"commit_url": info.commit_url, "pr_url": info.pr_url}


def _public_text(text, public_spec):
    """``text`` with every ``file:`` spec naming a local path shortened to its file name."""
    import re

    if not isinstance(text, str):
        return text
    return re.sub(r"file:[^\s,;)]+", lambda m: public_spec(m.group(0)), text)


def public_files(out: Path) -> dict[str, bytes]:
    """What :func:`publish_leaderboard` uploads, by path in the dataset: the leaderboard (local model folders by
    their last name only), its Markdown as the dataset card, ``sweep.json`` and each model's report
    (:func:`~hubaudit.report.public_report_json`: no generated text, no local path; its Markdown and chart
    rendered again from that copy). Nothing else of ``out`` is read."""
    import io
    import json
    import tempfile

    import pandas as pd

    from .report import _is_local, _local_name, public_report_json, public_spec, render_plot
    from .report import render_markdown as report_markdown
    from .results import AuditReport

    files: dict[str, bytes] = {}
    frame = pd.read_parquet(out / "leaderboard.parquet")
    for col in ("model", "forget"):
        if col in frame.columns:
            frame[col] = [(_local_name(m) if isinstance(m, str) and _is_local(m) else m) for m in frame[col]]
    for col in ("worst_spec", "summary"):  # a local artifact (file:/home/...) by its file name
        if col in frame.columns:
            frame[col] = [_public_text(v, public_spec) for v in frame[col]]
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    files["leaderboard.parquet"] = buf.getvalue()
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    files["README.md"] = (DATASET_CARD + "\n" + render_markdown(rows)).encode("utf-8")
    if (out / "sweep.json").is_file():
        meta = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        meta.pop("ray_address", None)
        for m in meta.get("models") or []:
            for k in ("model", "reference", "forget"):
                if isinstance(m.get(k), str) and _is_local(m[k]):
                    m[k] = _local_name(m[k])
            if isinstance(m.get("report"), str) and Path(m["report"]).is_absolute():
                m["report"] = None
        files["sweep.json"] = (json.dumps(meta, indent=1) + "\n").encode("utf-8")
    for f in sorted((out / "reports").glob("*/report.json")) if (out / "reports").is_dir() else []:
        folder = f.parent.relative_to(out).as_posix()
        public = public_report_json(json.loads(f.read_text(encoding="utf-8")))
        files[f"{folder}/report.json"] = (json.dumps(public, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
        report = AuditReport.from_json(public)
        files[f"{folder}/report.md"] = report_markdown(report).encode("utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            render_plot(report, Path(tmp) / "report.png")
            files[f"{folder}/report.png"] = (Path(tmp) / "report.png").read_bytes()
    return files


def read_leaderboard(repo: str, *, revision: str | None = None, token: str | bool | None = None):
    """The published leaderboard of Hub dataset ``repo`` as a DataFrame (what the Space shows)."""
    import pandas as pd
    from huggingface_hub import hf_hub_download

    from .source import hub_errors

    with hub_errors(repo, revision, repo_type="dataset"):
        path = hf_hub_download(repo, "leaderboard.parquet", repo_type="dataset", revision=revision, token=token)
    frame = pd.read_parquet(path)
    missing = [c for c in ("model", "verdict", "forget") if c not in frame.columns]
    if missing:
        raise LeaderboardError(f"dataset '{repo}' has a leaderboard.parquet without {', '.join(missing)}; is it a "
                               "hubaudit leaderboard?")
    return frame

