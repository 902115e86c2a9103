"""Every attack measured against a control: a model that never learned the forget set.

An attack can *teach* instead of *recover*: fine-tuning on any text, or relearning on a slice of the forget
set, also raises the forget scores of a model that never knew the facts (Feng et al., arXiv 2506.00688;
open-unlearning scores relearning as a ratio against the retain model). With a control (``--control MODEL``:
a retain-only model, or the original's own base) every requested attack also runs on the control, and the
verdict counts only the regain beyond what the same attack does to the control, item by item (difference in
differences, the control's side counted only where the attack raised it)::

    d_i = (attacked_target_i - fp_target_i) - max(0, attacked_control_i - fp_control_i)

over the same forget items (a training attack's trained items held out for both), with the same 95% paired
bootstrap interval of the mean of ``d``, the one-sided sign test of ``d`` and Holm over the grid as
:mod:`hubaudit.verdict` uses for the raw change.

Why ``max(0, ...)``: what the calibration removes is what an attack *adds* to a model that never knew the facts
(teaching). An attack that damages the control lowers its scores, but that is no regain of the target: a target
at the floor (an unlearned model scoring 0) cannot fall with it, and the plain difference would then credit the
target with the control's loss. On the demo world a destructive fine-tune (``qlora:nf4:16:64:lr=1e-3``, KnowMem
retain -82 points) left the unlearned model's VerbMem forget where it was (-0.4) and lowered the retain-only
control's by 17.8; the plain difference called that +17.4, fragile. With the clip, ``d_i <= `` the raw change on
every item, so the calibration can only take a fragile verdict away, never make one (and a robust one stays
robust: every bootstrap resample's mean is at most the raw one's). A spec the control cannot run (a published build of the
audited model, ``file:``, or a control cell that failed) keeps its raw change and is named as not calibrated.

Without a control nothing changes in the verdict, and the report says that no figure was calibrated. Either
way, training attacks (``relearn``, ``finetune``, ``qlora``) also report their effect on the retain items
(``derived["retain_effect"]``): what the fine-tune cost or taught beside the forget set.

What this module adds to ``derived`` (:func:`derive_calibrated`): ``calibration`` (control name, per-spec
``calibrated`` flag and why not, the method), ``calibrated_changes`` (spec -> metric -> the paired change of
``d``, with ``raw_mean``, ``control_mean`` and ``control_counted``, the mean of ``max(0, ...)``),
``control_regained`` (spec -> metric -> the control's mean
regain) and ``retain_effect``.
"""

from __future__ import annotations

from dataclasses import replace

from .attacks import FULL_PRECISION, get_attack
from .errors import HubauditError
from .metrics.scores import keys as score_keys, label as score_label, verdict_keys
from .results import CellResult, Verdict
from .stats import holm, paired_change
from .verdict import _require_attack, _scores, _trained_items, _verdict, derive

CONTROL = "control"  # the role of the control model's cells
TRAINING_KIND = "training"
METHOD = ("difference in differences per item: (attacked target - full-precision target) - max(0, attacked control - "
          "full-precision control), on the same forget items (trained items held out): only what the attack adds to the "
          "control is removed; 95% paired bootstrap interval, one-sided sign test, Holm over every (spec, forget metric) "
          "pair")
NOT_CALIBRATED_NOTE = ("not calibrated: no control model (--control) was given, so a figure may include what the attack "
                       "does to any model, knowledge it teaches rather than recovers")


def _ok(cell: CellResult | None) -> bool:
    return cell is not None and cell.status == "ok"


def _kind(spec: str) -> str | None:
    try:
        return get_attack(spec)[0].kind
    except HubauditError:
        return None


def retain_effect(by: dict, specs: list[str], role: str = "model") -> dict:
    """For every training attack: its paired change of each retain metric against full precision
    (``{spec: {metric: change}}``), what the fine-tune did beside the forget set."""
    base = by.get((role, FULL_PRECISION))
    out: dict[str, dict] = {}
    if not _ok(base):
        return out
    for spec in specs:
        cell = by.get((role, spec))
        if _kind(spec) != TRAINING_KIND or not _ok(cell):
            continue
        for m in score_keys(side="retain"):  # every retain metric, as each declares itself
            a, b = _scores(cell, m), _scores(base, m)
            if a and b and len(a) == len(b):
                out.setdefault(spec, {})[m] = paired_change(a, b).to_json()
    return out


def _did(by: dict, spec: str, m: str):
    """(x, y): the target's and the control's per-item changes of metric ``m`` under ``spec`` on the items
    neither trained on, or a reason why there are none."""
    t, tf = by.get(("model", spec)), by.get(("model", FULL_PRECISION))
    c, cf = by.get((CONTROL, spec)), by.get((CONTROL, FULL_PRECISION))
    if not _ok(c) or not _ok(cf):
        cell = c if not _ok(c) else cf
        return None, f"the control's cell {cell.spec if cell else spec} was not evaluated" + (
            f" ({cell.status}: {(cell.reason or '').splitlines()[0][:80] if cell.reason else ''})" if cell else "")
    k = max(_trained_items(t, m), _trained_items(c, m))
    scores = [_scores(x, m, k) for x in (t, tf, c, cf)]
    if any(s is None for s in scores) or len({len(s) for s in scores}) != 1 or not scores[0]:
        return None, f"the control has no per-item {score_label(m)} scores on the same items"
    ta, tb, ca, cb = scores
    return ([a - b for a, b in zip(ta, tb)], [a - b for a, b in zip(ca, cb)]), None


def did(x: list[float], y: list[float]):
    """The paired change of ``d_i = x_i - max(0, y_i)`` (target's change minus what the attack added to the
    control), as :func:`hubaudit.stats.paired_change` reports it."""
    return paired_change(x, [max(0.0, v) for v in y])


def display_name(name: str | None) -> str | None:
    """A control's name as reports show it: a Hub id as it is, a local folder by its last name only."""
    from .report import _is_local, _local_name

    return _local_name(name) if name and _is_local(name) else name


def derive_calibrated(cells: list[CellResult], specs: list[str], threshold: float, auc_retrain: float,
                      alpha: float, control_name: str | None = None) -> tuple[dict, Verdict]:
    """:func:`hubaudit.verdict.derive`, then, when ``cells`` hold a control's (role ``control``), the verdict
    again on the calibrated changes (see the module docstring). Raw figures (``regained``, ``changes``) stay as
    they are; the calibrated ones are added beside them."""
    model_cells = [c for c in cells if c.role != CONTROL]
    derived, verdict = derive(model_cells, specs, threshold, auc_retrain, alpha)
    by = {(c.role, c.spec): c for c in cells}
    derived["retain_effect"] = retain_effect(by, specs)
    has_control = any(c.role == CONTROL for c in cells)
    if not has_control:
        derived["calibration"] = {"control": None, "calibrated": {s: False for s in specs}, "note": NOT_CALIBRATED_NOTE}
        return derived, verdict
    cal: dict[str, dict] = {}
    control_regained: dict[str, dict] = {}
    flags: dict[str, bool] = {}
    why_not: dict[str, str] = {}
    pairs = []  # (spec, metric, PairedChange, calibrated)
    raw = derived.get("changes") or {}
    for spec in specs:
        if not _ok(by.get(("model", spec))):
            continue
        calibrated_here = True
        for m in verdict_keys():
            if m not in raw.get(spec, {}):
                continue
            xy, why = _did(by, spec, m)
            if xy is None:
                calibrated_here = False
                why_not.setdefault(spec, why)
                ch = _raw_change(by, spec, m)
                if ch is not None:
                    pairs.append((spec, m, ch, False))
                continue
            x, y = xy
            ch = did(x, y)
            pairs.append((spec, m, ch, True))
            control_regained.setdefault(spec, {})[m] = (sum(y) / len(y), sum(max(0.0, v) for v in y) / len(y))
        if any(p[0] == spec for p in pairs):
            flags[spec] = calibrated_here
    for (spec, m, ch, is_cal), p_adj in zip(pairs, holm([p[2].p for p in pairs])):
        ch.p_holm = p_adj
        if is_cal:
            x_mean = raw[spec][m]["mean"]
            mean, counted = control_regained[spec][m]
            cal.setdefault(spec, {})[m] = {**ch.to_json(), "raw_mean": x_mean, "control_mean": round(mean, 4),
                                           "control_counted": round(counted, 4)}
    regained = {spec: {m: ch.mean for s2, m, ch, _ in pairs if s2 == spec} for spec in dict.fromkeys(p[0] for p in pairs)}
    kinds = derived.get("kinds") or {}
    by_kind: dict[str, tuple] = {}
    for spec, deltas in regained.items():
        for m, v in deltas.items():
            k = kinds.get(spec, "quantization")
            if k not in by_kind or v > by_kind[k][2]:
                by_kind[k] = (spec, m, v)
    has_ref = _ok(by.get(("reference", FULL_PRECISION)))
    plain = [(s, m, ch) for s, m, ch, _ in pairs]
    new = _verdict(plain, regained, derived.get("retained_ci") or {}, has_ref, threshold, alpha, kinds, by_kind,
                   verdict_keys())
    new = _require_attack(new, {k: v for k, v in by.items() if k[0] != CONTROL}, specs, plain, threshold, alpha)
    control_name = display_name(control_name)
    who = f"the control {control_name}" if control_name else "the control model"
    uncal = [s for s, ok in flags.items() if not ok]
    words = (f"; calibrated against {who}: each figure is the regain beyond what the same attack does to it, item by "
             "item" + (f" (not calibrated: {', '.join(uncal)})" if uncal else ""))
    head, sep, tail = new.summary.rpartition(", so no verdict")
    new = replace(new, summary=head + words + sep + tail if sep else new.summary + words)
    derived["calibration"] = {"control": control_name or CONTROL, "calibrated": {s: flags.get(s, False) for s in specs},
                              "not_calibrated": why_not, "method": METHOD,
                              "uncalibrated_verdict": {"label": verdict.label, "summary": verdict.summary}}
    derived["calibrated_changes"] = cal
    derived["control_regained"] = {s: {m: v[0] for m, v in per.items()} for s, per in control_regained.items()}
    derived["max_regained_by_kind_calibrated"] = {k: {"spec": v[0], "metric": v[1], "regained": v[2]}
                                                 for k, v in by_kind.items()}
    derived["retain_effect_control"] = retain_effect(by, specs, CONTROL)
    return derived, new


def _raw_change(by: dict, spec: str, m: str):
    """The raw paired change of a spec the control could not calibrate (as :func:`derive` computes it)."""
    cell, base = by.get(("model", spec)), by.get(("model", FULL_PRECISION))
    k = _trained_items(cell, m)
    a, b = _scores(cell, m, k), _scores(base, m, k)
    if a is None or b is None or len(a) != len(b) or not a:
        return None
    return paired_change(a, b)


def calibrated(derived: dict) -> bool:
    """Whether the report's verdict was calibrated against a control (every evaluated attack)."""
    flags = ((derived or {}).get("calibration") or {}).get("calibrated") or {}
    return bool(flags) and all(flags.values())
