"""Writing an audit: ``report.json`` (everything), ``report.md`` (a table to read in ten seconds),
``report.png`` (forget metrics by spec, full precision and the original marked).

Files are written only when the audit finished; an earlier run's reports in the same folder are
moved to ``history/<time>/`` first, never overwritten; nothing else in the folder is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .attacks import FULL_PRECISION, get_attack
from .errors import HubauditError, OutputDirError
from .metrics.scores import get as score_of, keys as score_keys, label, notes, verdict_keys
from .recommend import recommend_command
from .results import AuditReport, change_text, largest_change

REPORT_FILES = ("report.json", "report.md", "report.png")
# report.png's colours, in the order of the scores it plots (keys(shown="plot"))
PLOT_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:olive", "tab:orange", "tab:cyan", "tab:brown",
               "tab:pink", "tab:gray")


def _digits(metric: str) -> int:
    """Decimals a table shows for ``metric``: 1 for points, 3 for a 0..1 value (its declared scale)."""
    s = score_of(metric)
    return s.digits if s else 1


def check_out_dir(out) -> Path:
    """Create ``out`` if needed and make sure files can be written there."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".hubaudit-check-"):
            pass
    except OSError as e:
        raise OutputDirError(f"cannot write to --out {out} ({e.strerror or e}); choose another folder") from None
    return out


def _fmt(x, signed=False, digits=1) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def safe_name(text: str, fallback: str = "") -> str:
    """``text`` as one file or folder name: runs of anything but letters, digits, ``.``, ``_`` and ``-``
    become ``-`` (no ``/``, no ``..``); ``fallback`` when nothing is left."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or fallback


def md_escape(text: str) -> str:
    """Text from a stranger's model card (or a model's name), shown as plain text in Markdown: no links,
    images or HTML."""
    import html

    text = html.escape(str(text), quote=False)
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|~>" else ch for ch in text)


def public_spec(spec: str) -> str:
    """The spec as a model card shows it: a local artifact (``file:/home/me/m.Q4_K_M.gguf``) by its file name
    only (``file:m.Q4_K_M.gguf``), so no local path goes onto the Hub; everything else as it is."""
    if spec.startswith("file:") and spec[5:].startswith(("/", "~", ".")):
        return "file:" + (spec[5:].rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or spec[5:])
    return spec


def public_summary(report: AuditReport) -> str:
    """The verdict's summary with every local artifact path shortened as :func:`public_spec` does."""
    text = report.verdict.summary
    for spec in sorted(report.specs, key=len, reverse=True):
        if public_spec(spec) != spec:
            text = text.replace(spec, public_spec(spec))
    return text


def _local_name(text) -> str:
    """A local path as its last component only (``/home/me/models/x`` -> ``x``)."""
    return str(text).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "local"


def _is_local(text) -> bool:
    t = str(text or "")
    return t.startswith(("/", "~", ".", "file:")) or "\\" in t or t.count("/") > 1


def public_report_json(report: dict) -> dict:
    """A copy of a ``report.json`` dict that may be published (a leaderboard dataset, a Space download of
    another's audit): no generated text (per item only the numbers: score, tokens, choices' scores; no
    ``output``, ``pred``, ``answer`` strings) and no local path (the results store, model folders, a local
    forget set or artifact: each by its last name only). Figures, commits and Hub ids stay."""
    d = json.loads(json.dumps(report))
    inp = d.get("inputs") or {}
    inp.pop("store", None)
    for role in ("model", "reference", "retrain", "control"):
        info = inp.get(role)
        if isinstance(info, dict):
            info.pop("path", None)
            if not info.get("repo_id") and info.get("name") is not None:
                info["name"] = _local_name(info["name"])
    forget = inp.get("forget") or {}
    src = str(forget.get("source") or "")
    if src and not src.startswith(("hub:", "builtin:")):
        forget["source"] = "local:" + _local_name(src)
    specs = list(inp.get("specs") or [])
    inp["specs"] = [public_spec(s) for s in specs]
    for cell in d.get("cells") or []:
        if cell.get("spec"):
            cell["spec"] = public_spec(cell["spec"])
        for name, rows in list((cell.get("items") or {}).items()):
            cell["items"][name] = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                                   if isinstance(r, dict) else None for r in rows or []]
        settings = (cell.get("backend") or {}).get("settings")
        if isinstance(settings, dict):
            for k, v in list(settings.items()):
                if isinstance(v, str) and _is_local(v):
                    settings[k] = _local_name(v)
    verdict = d.get("verdict") or {}
    for key in ("summary", "worst_spec"):
        if isinstance(verdict.get(key), str):
            for spec in sorted(specs, key=len, reverse=True):
                verdict[key] = verdict[key].replace(spec, public_spec(spec))
    local_specs = {s: public_spec(s) for s in specs if public_spec(s) != s}

    def rekey(x):
        if isinstance(x, dict):
            return {local_specs.get(k, k): rekey(v) for k, v in x.items()}
        if isinstance(x, list):
            return [rekey(v) for v in x]
        return local_specs.get(x, x) if isinstance(x, str) else x

    if local_specs:
        d["derived"] = rekey(d.get("derived") or {})
    derived = d.get("derived") or {}
    for key in ("reference_note", "retained_note"):
        note = derived.get(key)
        if isinstance(note, str):
            for role in ("model", "reference", "retrain"):
                info = (report.get("inputs") or {}).get(role) or {}
                for raw in (info.get("path"), info.get("name")):
                    if raw and _is_local(raw):
                        note = note.replace(str(raw), _local_name(raw))
            derived[key] = note
    return d


def spec_label(spec: str) -> str:
    return "full precision" if spec == FULL_PRECISION else public_spec(spec)


def render_markdown(report: AuditReport) -> str:
    """The report as Markdown: verdict, one table for the model, one for the original."""
    inp, d, v = report.inputs, report.derived, report.verdict
    specs = [FULL_PRECISION, *report.specs]
    metrics = [m for m in score_keys(shown="report") if any(m in c.metrics for c in report.cells)]
    lines = [f"# hubaudit: {inp['model']['name']}", ""]
    lines.append(f"**Verdict: {v.label.upper()}**: {v.summary}.")
    lines.append("")
    ref = inp.get("reference")
    rec = d.get("recommendation")
    if rec and rec.get("action") == "unlearn":
        cmd = recommend_command(ref["name"] if ref else "ORIGINAL_MODEL", inp["forget"].get("source") or inp["forget"]["name"],
                                settings=rec.get("settings"))
        lines += ["Way out: redo the unlearning from the original with SURE, the paper's fix, and audit the result "
                  f"(see docs/guide/unlearn.md): `{cmd}`", ""]
    lines.append(
        f"Forget set `{inp['forget']['name']}` ({', '.join(f'{k} {n}' for k, n in inp['forget']['sizes'].items())}); "
        f"reference (original): {'`' + ref['name'] + '`' if ref else 'none'}; threshold {v.threshold:g} points; "
        f"{inp['device']} {inp['dtype']}{' (' + inp['dtype_reason'] + ')' if inp.get('dtype_reason') else ''}."
    )
    lines.append("")
    head = ["precision", *(label(m) for m in metrics), "regained (max forget) [95% CI]", "items up / down, p"]
    if ref:
        head.append("retained vs original (KnowMem f / VerbMem) [95% CI]")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    recovery = recovery_specs(report)  # prune, relearn: a table of their own
    for spec in [s for s in specs if s not in recovery] + (["(recovery)"] if recovery else []) + recovery:
        if spec == "(recovery)":
            lines += ["", f"Recovery attacks (not quantization: {_attack_notes(recovery)}):", ""]
            lines += ["| " + " | ".join(["attack", *head[1:]]) + " |", "|" + "---|" * len(head)]
            continue
        c = report.cell("model", spec)
        if c is None:
            continue
        if c.status != "ok":
            lines.append(f"| {spec_label(spec)} | {c.status}: {c.reason} |" + " |" * (len(head) - 2))
            continue
        se = (d.get("stderr") or {}).get("model", {}).get(spec, {})
        row = [spec_label(spec), *(_fmt(c.metrics.get(m), digits=_digits(m))
                                   + (f" ± {_fmt(se[m], digits=_digits(m))}" if m in se else "")
                                   for m in metrics)]
        row += regain_cells(d, spec)
        if ref:
            row.append(_retained_cell(d, spec))
        lines.append("| " + " | ".join(row) + " |")
    if ref:
        lines += ["", f"Original model `{ref['name']}`:", ""]
        lines.append("| precision | " + " | ".join(label(m) for m in metrics) + " |")
        lines.append("|" + "---|" * (len(metrics) + 1))
        for spec in specs:
            c = report.cell("reference", spec)
            if c is None:
                continue
            if c.status != "ok":
                lines.append(f"| {spec_label(spec)} | {c.status}: {c.reason} |" + " |" * (len(metrics) - 1))
                continue
            lines.append("| " + " | ".join([spec_label(spec), *(_fmt(c.metrics.get(m), digits=_digits(m))
                                                             for m in metrics)]) + " |")
    lines += _changes_table(report)
    lines += calibration_lines(report)
    st = d.get("statistics") or {}
    if st:
        lines += ["", f"Uncertainty: ± is the standard error of a score (over its items); {st.get('interval', '')} "
                  "intervals of the per-item change against full precision; "
                  f"p: {st.get('test', '')}, Holm-adjusted over {st.get('tests', 0)} (spec, metric) pairs; alpha "
                  f"{st.get('alpha', 0):g}. Fragile needs a mean regain of at least {v.threshold:g} points *and* a "
                  "significant p; robust needs every interval to end below the threshold; not-unlearned: "
                  f"{st.get('not_unlearned_rule', '')}."]
    lines += [
        "",
        "Scores are ROUGE-L F1 x 100 (MUSE's definitions); PrivLeak is (AUC - AUC_retrain) / AUC_retrain x 100 "
        f"with AUC_retrain = {d.get('auc_retrain', 0):.4f} ({d.get('auc_retrain_source', '')}); near 0 is good, "
        "near -100 means the forget texts look like training data. Regained = score under the spec minus full "
        "precision; retained = unlearned / original at the same precision.",
    ]
    if notes(metrics):
        lines += ["", "; ".join(notes(metrics)) + "."]
    if d.get("retained_note"):
        lines += ["", d["retained_note"].capitalize() + "."]
    if any(m.startswith(("tofu_", "wmdp_", "mmlu_")) for m in metrics):
        lines += ["", "TOFU: ROUGE-L recall x 100 of the greedy answer, answer probability P(a|q)^(1/|a|), truth ratio "
                  "(forget: mean min(R, 1/R), 1 = cannot tell right from wrong; retain: mean max(0, 1 - R)). "
                  "WMDP/MMLU: accuracy x 100, the answer letter with the highest log-likelihood "
                  "(lm-evaluation-harness's zero-shot prompt)."]
    subjects = (inp.get("forget") or {}).get("mmlu_subjects") or []
    if "mmlu_acc" in metrics and subjects and subjects != ["all"]:
        lines += ["", f"MMLU accuracy rests on {len(subjects)} of MMLU's 57 subjects ({', '.join(subjects)}), not the "
                  "harness's full MMLU group (read it with `+mmlu=all`)."]
    if any(m.startswith("tofu_") for m in metrics):
        t = inp.get("chat_template")
        lines += ["", f"TOFU prompts: the model's chat template (sha256 {t['sha256']}), e.g. `{t['example']!r}`."
                  if t else "TOFU prompts: plain text, as open-unlearning builds them without a chat template "
                  "(`Question: {q}\\nAnswer: `, or `[INST] {q} [/INST]` for Llama-2-style tokenizers)."]
    if d.get("forget_quality"):
        lines += ["", "TOFU forget quality (KS-test p-value of forget truth ratios vs the retrain model's, or the retain "
                  "model's logs given with --retain-logs; high = "
                  "indistinguishable from never trained): " + ", ".join(f"{spec_label(k)} {p:.3g}" for k, p in d["forget_quality"].items()) + "."]
    lines += _sequential_lines(report)
    lines += _decoding_lines(report)
    lines += _artifact_lines(report)
    skipped = [c for c in report.cells if c.status != "ok"]
    if skipped:
        lines += ["", "Cells not evaluated: " + "; ".join(f"{c.role} {c.spec}: {c.status} ({c.reason})" for c in skipped)]
    lines += ["", f"hubaudit {report.hubaudit_version}, {report.created}, {report.timings.get('total_seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def recovery_specs(report: AuditReport) -> list[str]:
    """The report's specs of the recovery family (pruning, training attacks), in order."""
    families = report.derived.kinds
    return [s for s in report.specs if families.get(s) == "recovery"]


def _attack_notes(specs: list[str]) -> str:
    """What each attack in ``specs`` does, one clause each, in order of first appearance."""
    notes: list[str] = []
    for spec in specs:
        try:
            note = get_attack(spec)[0].report_note
        except HubauditError:  # a report written by another version, naming an attack unknown here
            note = spec.split(":")[0]
        if note and note not in notes:
            notes.append(note)
    return "; ".join(notes)


def artifact_text(settings: dict) -> str:
    """One line about a published artifact (``file:``): what it is and what pins it."""
    if settings.get("format") == "gguf":
        mix = ", ".join(f"{t} x{n}" for t, n in (settings.get("type_counts") or {}).items())
        what = (f"GGUF {settings.get('file_type') or '?'} ({mix}; {settings.get('bits_per_weight_matrices')} bits per "
                f"weight of the matrices), architecture {settings.get('architecture')}")
    else:
        qc = settings.get("quantization_config") or {}
        keys = ", ".join(f"{k} {qc[k]}" for k in ("bits", "group_size", "load_in_4bit", "bnb_4bit_quant_type", "sym",
                                                   "desc_act") if k in qc)
        what = f"pre-quantized {settings.get('quant_method')}" + (f" ({keys})" if keys else "")
    pin = settings.get("identity", "")
    return f"{what}; {pin}"


def _artifact_lines(report: AuditReport) -> list[str]:
    cells = [c for c in report.cells if c.role == "model" and (c.backend or {}).get("backend") == "file"]
    if not cells:
        return []
    return ["", "Published builds audited (loaded as published, checked to be the audited model's architecture and "
            "tokenizer): " + "; ".join(f"`{c.spec}`: {artifact_text(c.backend.get('settings') or {})}" for c in cells) + "."]


def regain_cells(d: dict, spec: str) -> list[str]:
    """A spec's regained column (its largest forget-metric change with the interval and the metric) and
    its items / p column, for report.md and the card; the bare regain for reports without changes."""
    found = largest_change(d, spec)
    if found is None:
        reg = d.get("regained", {}).get(spec, {})
        forget_reg = [reg[m] for m in verdict_keys() if m in reg]
        return [_fmt(max(forget_reg), signed=True) if forget_reg else "–", "–"]
    m, ch = found
    p = ch.get("p_holm")
    return [f"{change_text(ch)} ({label(m)})", f"{ch['up']} / {ch['down']} of {ch['n']}, p = {p:.2g}" if p is not None else "–"]


def _retained_cell(d: dict, spec: str) -> str:
    ret, ci = d.get("retained", {}).get(spec, {}), d.get("retained_ci", {}).get(spec, {})
    out = []
    for m in ("knowmem_f", "verbmem_f"):
        if m not in ret:
            out.append("–")
            continue
        lo, hi = (ci.get(m) or {}).get("ci") or [None, None]
        out.append(f"{ret[m]:.0f}%" + (f" [{lo:.0f}, {hi:.0f}]" if lo is not None and hi is not None else ""))
    return " / ".join(out)


def _sequential_lines(report: AuditReport) -> list[str]:
    """A ``--sequential`` audit: how each (spec, forget metric) pair was decided, on how many items."""
    seq = report.derived.get("sequential") or {}
    pairs = seq.get("pairs") or {}
    if not pairs:
        return []
    lines = ["", f"Sequential audit (items drawn in a random order, seed {seq.get('seed')}; each pair tested at level "
             f"{seq.get('alpha')}/{seq.get('pairs_total')}): the items each decision used:", "",
             "| spec | metric | decision | items used / available | mean change [anytime-valid interval] | "
             "sign-test e-value | decided by |", "|---|---|---|---|---|---|---|"]
    for spec, by_metric in pairs.items():
        for m, p in by_metric.items():
            cs = p.get("cs") or [None, None]
            mean = "–" if p.get("mean") is None else f"{p['mean']:+.1f} [{cs[0]:+.1f}, {cs[1]:+.1f}]"
            e = p.get("evalue")
            lines.append(f"| {spec} | {label(m)} | {p.get('decision')} | {p.get('n')} / {p.get('population')} | {mean} | "
                         f"{'–' if e is None else f'{e:.3g}'} | {p.get('decided_by') or '–'} |")
    return lines


def _changes_table(report: AuditReport) -> list[str]:
    """Every (spec, forget metric) pair the verdict tested: change, interval, items, raw and Holm p."""
    d = report.derived
    changes = d.get("changes") or {}
    skipped = (d.get("statistics") or {}).get("not_counted") or {}
    not_counted = ["", "Not tested: " + "; ".join(f"{label(m)}: {why}" for m, why in skipped.items()) + "."] if skipped else []
    if not changes:
        return not_counted
    share = d.get("regained_share") or {}
    lines = ["", "Every (spec, forget metric) pair tested, change against full precision:", "",
             "| spec | metric | change [95% CI] | up / down / unchanged | p (raw) | p (Holm) | share of what was forgotten |",
             "|---|---|---|---|---|---|---|"]
    for spec in report.specs:
        for m, ch in (changes.get(spec) or {}).items():
            sh = (share.get(spec) or {}).get(m)
            lines.append(f"| {spec} | {label(m)} | {change_text(ch)} | {ch['up']} / {ch['down']} / {ch['ties']} | "
                         f"{ch['p']:.2g} | {ch['p_holm']:.2g} | {'–' if sh is None else f'{sh:.0f}%'} |")
    return lines + not_counted


def calibration_state(derived: dict) -> str:
    """``calibrated`` (every evaluated attack measured against a control model), ``partly calibrated`` or
    ``not calibrated`` (no control, or a report from before controls), from ``derived["calibration"]``."""
    flags = ((derived or {}).get("calibration") or {}).get("calibrated") or {}
    if flags and all(flags.values()):
        return "calibrated"
    return "partly calibrated" if any(flags.values()) else "not calibrated"


def calibration_lines(report: AuditReport) -> list[str]:
    """Whether the figures were calibrated against a control (and the calibrated changes), and what the training
    attacks did to the retain items (:mod:`hubaudit.calibrate`)."""
    d = report.derived
    cal = d.get("calibration")
    if cal is None:
        return []
    lines: list[str] = []
    if not cal.get("control"):
        lines += ["", f"Calibration: {cal.get('note') or 'not calibrated'}."]
    else:
        lines += ["", f"Calibration against the control `{cal['control']}` (a model that never learned the forget set): "
                  f"the verdict counts {cal.get('method', '')}.", "",
                  "| spec | metric | target regain | control regain (counted) | beyond control [95% CI] | "
                  "up / down / unchanged | p (Holm) |", "|---|---|---|---|---|---|---|"]
        for spec, per in (d.get("calibrated_changes") or {}).items():
            for m, ch in per.items():
                lines.append(f"| {public_spec(spec)} | {label(m)} | {_fmt(ch.get('raw_mean'), signed=True)} | "
                             f"{_fmt(ch.get('control_mean'), signed=True)} ({_fmt(ch.get('control_counted'), signed=True)}) | "
                             f"{change_text(ch)} | "
                             f"{ch['up']} / {ch['down']} / {ch['ties']} | {ch['p_holm']:.2g} |")
        for spec, why in (cal.get("not_calibrated") or {}).items():
            lines += ["", f"Not calibrated: {public_spec(spec)} ({why}); its raw change counts."]
        before = cal.get("uncalibrated_verdict") or {}
        if before.get("label") and before["label"] != report.verdict.label:
            lines += ["", f"Without the calibration the verdict would be {before['label']}."]
    effect = d.get("retain_effect") or {}
    if effect:
        lines += ["", "Training attacks on the retain items (change against full precision): " + "; ".join(
            f"{public_spec(spec)} " + ", ".join(f"{label(m)} {change_text(ch)}" for m, ch in per.items())
            for spec, per in effect.items()) + "."]
    return lines


def _decoding_lines(report: AuditReport) -> list[str]:
    """How the text was generated: hubaudit's fast loop, or ``model.generate`` (and why), per cell."""
    slow = [c for c in report.cells if c.backend.get("decoding") == "generate"]
    fast = [c for c in report.cells if c.backend.get("decoding") == "fast"]
    if not slow and not fast:
        return []
    if not slow:
        return ["", "Decoding: hubaudit's greedy loop with a KV cache (`decoding: fast`) in every cell."]
    why = sorted({c.backend.get("decoding_reason") or "not recorded" for c in slow})
    return ["", f"Decoding: batched `model.generate` (`decoding: generate`, same greedy text, slower) in "
            f"{', '.join(f'{c.role} {spec_label(c.spec)}' for c in slow)}, because: {'; '.join(why)}."]


def render_plot(report: AuditReport, path: Path) -> None:
    """Forget metrics by spec: the audited model solid, the original dashed, full precision marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [FULL_PRECISION, *report.specs]
    plotted = score_keys(shown="plot")
    names = [m for m in plotted if any(m in c.metrics for c in report.cells)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(specs)), 4.2), dpi=110)
    colors = {m: PLOT_COLORS[i % len(PLOT_COLORS)] for i, m in enumerate(plotted)}
    x = list(range(len(specs)))
    for m in names:
        for role, style in (("model", "-o"), ("reference", "--s")):
            ys = []
            for s in specs:
                c = report.cell(role, s)
                ys.append(c.metrics.get(m) if c and c.status == "ok" else float("nan"))
            if all(y != y for y in ys):
                continue
            name = f"{label(m)} ({'audited' if role == 'model' else 'original'})"
            ax.plot(x, ys, style, color=colors[m], label=name, alpha=1.0 if role == "model" else 0.55)
            if role == "model":  # error bars: the 95% interval of the change against full precision
                changes = report.derived.get("changes") or {}
                lo_err, hi_err, xs, yv = [], [], [], []
                for i, s in enumerate(specs):
                    ch = (changes.get(s) or {}).get(m)
                    if ch and ch.get("ci") and ch["ci"][0] is not None and ys[i] == ys[i]:
                        xs.append(i)
                        yv.append(ys[i])
                        lo_err.append(max(0.0, ch["mean"] - ch["ci"][0]))
                        hi_err.append(max(0.0, ch["ci"][1] - ch["mean"]))
                if xs:
                    ax.errorbar(xs, yv, yerr=[lo_err, hi_err], fmt="none", ecolor=colors[m], capsize=3, lw=1)
        base = report.cell("model", FULL_PRECISION)
        if base and m in base.metrics and score_of(m).side == "forget":
            ax.axhline(base.metrics[m], color=colors[m], lw=0.8, ls=":", alpha=0.8)
    ax.axvspan(-0.4, 0.4, color="0.9", zorder=0)
    ax.set_xticks(x, [spec_label(s) for s in specs], rotation=20)
    ax.set_ylabel("ROUGE-L F1 x 100" if not any(m.startswith(("tofu_", "wmdp_", "mmlu_")) for m in names) else "score x 100")
    ax.set_ylim(0, 105)
    v = report.verdict
    ax.set_title(f"{report.inputs['model']['name']}: {v.label.upper()}", fontsize=10)
    if report.derived.get("changes"):
        ax.text(0.99, 0.01, "error bars: 95% interval of the change against full precision", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=6, color="0.4")
    if ax.get_legend_handles_labels()[0]:  # nothing plotted (only 0..1 metrics): no empty legend
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_report(report: AuditReport, out) -> dict[str, Path]:
    """Write the three report files into ``out``; earlier ones go to ``out/history/<time>/``."""
    out = check_out_dir(out)
    staged: dict[str, Path] = {}
    try:
        for name in REPORT_FILES:
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            staged[name] = Path(tmp)
        staged["report.json"].write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False) + "\n")
        staged["report.md"].write_text(render_markdown(report))
        render_plot(report, staged["report.png"])
        earlier = [out / n for n in REPORT_FILES if (out / n).exists()]
        if earlier:
            stamp = _earlier_stamp(out / "report.json")
            hist = out / "history" / stamp
            n = 1
            while hist.exists():
                n += 1
                hist = out / "history" / f"{stamp}-{n}"
            hist.mkdir(parents=True)
            for p in earlier:
                shutil.move(str(p), hist / p.name)
        final = {}
        for name, tmp in staged.items():
            os.replace(tmp, out / name)
            final[name] = out / name
        return final
    finally:
        for tmp in staged.values():
            if tmp.exists():
                tmp.unlink()


def _earlier_stamp(path: Path) -> str:
    try:
        created = json.loads(path.read_text()).get("created", "")
    except (OSError, ValueError):
        created = ""
    stamp = "".join(ch if ch.isalnum() else "-" for ch in created) or "earlier"
    return stamp
