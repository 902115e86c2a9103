"""The audit: one model (and optionally its original) at full precision and under every spec.

Flow: read the forget set, choose the metrics it supports, then for each model evaluate full
precision once and each spec once, one quantized copy in memory at a time. Every finished metric is
written to the results store at once, so an interrupted audit resumes where it stopped and a model
audited before (the same original behind six unlearned variants) is not evaluated again.

Derived figures (the paper's, arXiv 2410.16454):
- knowledge regained = metric(spec) - metric(full precision), per forget metric;
- knowledge retained = metric(unlearned) / metric(original) x 100 at the same precision;
- utility = KnowMem retain.
Verdict: ``fragile`` when some spec regains at least ``threshold`` points of VerbMem or KnowMem
forget, ``robust`` otherwise.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .errors import HubauditError
from .forget import ForgetSet, load_forget_set
from .metrics import MetricConfig, evaluate, privleak, resolve_metrics
from .metrics.base import Metric
from .modeling import ModelSource
from .quant import FULL_PRECISION, get_backend, parse_specs
from .quant.base import spec_kind
from .quant.relearn import heldout_regained
from .results import VERDICT_METRICS, LABELS, AuditReport, CellResult, Verdict
from .store import ResultStore

log = logging.getLogger("hubaudit")

DEFAULT_SPECS = ("cast:bf16", "rtn:8", "rtn:4", "rtn:4:g128")
DEFAULT_THRESHOLD = 5.0
ASSUMED_AUC_RETRAIN = 0.5


def _version() -> str:
    from . import __version__

    return __version__


def metric_key(metric: Metric, cfg: MetricConfig, source: ModelSource) -> str:
    """What a stored value depends on besides model, spec and forget set."""
    return json.dumps(
        {"v": metric.version, "settings": metric.settings(cfg), "device": source.device.split(":")[0],
         "dtype": str(source.compute_dtype()).replace("torch.", "")},
        sort_keys=True,
    )


@dataclass
class _Plan:
    role: str
    source: ModelSource
    spec: str  # "fp" or a spec string
    metrics: list[Metric]


class Auditor:
    """Runs the grid of one audit. Use :func:`audit` unless you need the pieces."""

    def __init__(self, fs: ForgetSet, cfg: MetricConfig, store: ResultStore | None,
                 fresh: bool = False, batch_size: int | None = None, progress: bool | object = True,
                 on_cell: Callable[[CellResult], None] | None = None):
        self.fs = fs
        self.fs_hash = fs.content_hash()
        self.cfg = cfg
        self.store = store
        self.fresh = fresh
        self.batch_size = batch_size
        self.progress = progress
        self.on_cell = on_cell

    def run_cell(self, plan: _Plan) -> CellResult:
        """One cell: stored metrics are reused, missing ones computed (and stored at once)."""
        src, spec = plan.source, plan.spec
        cell = CellResult(role=plan.role, spec=spec)
        keys = {m.name: metric_key(m, self.cfg, src) for m in plan.metrics}
        found: dict[str, dict] = {}
        info = None
        if self.store is not None and not self.fresh:
            for m in plan.metrics:
                rec = self.store.get(src.identity, spec, self.fs_hash, m.name, keys[m.name])
                if rec is not None:
                    found[m.name] = rec
            info = self.store.get(src.identity, spec, self.fs_hash, "_cell", "")
        missing = [m for m in plan.metrics if m.name not in found]
        if missing:
            self._compute(plan, cell, missing, keys, found)
        elif info:  # everything reused: report how the cell was computed back then
            cell.backend = info.get("backend", {})
            cell.seconds = info.get("seconds", 0.0)
            cell.quantize_seconds = info.get("quantize_seconds", 0.0)
            cell.peak_rss_bytes = info.get("peak_rss_bytes")
            cell.peak_cuda_bytes = info.get("peak_cuda_bytes")
        cell.reused = not missing
        for m in plan.metrics:
            if m.name in found:
                rec = found[m.name]
                cell.metrics[m.name] = rec["value"]
                cell.n_items[m.name] = rec["n"]
                cell.items[m.name] = rec.get("items", [])
                cell.tokens += rec.get("tokens", 0)
        _record_decoding(cell, [found[m.name].get("decoding") for m in plan.metrics if m.name in found])
        return cell

    def _compute(self, plan: _Plan, cell: CellResult, missing: list[Metric], keys: dict, found: dict) -> None:
        from .memory import PeakMemory

        src, spec = plan.source, plan.spec
        backend = None
        if spec != FULL_PRECISION:
            backend, qspec = get_backend(spec)
            reason = backend.unavailable_reason()
            if reason:
                cell.status, cell.reason = "skipped", reason
                return
            if backend.needs_forget_set:  # a recovery attack (relearn) trains on part of the forget set
                backend.forget_set = self.fs
        t0 = time.perf_counter()
        model = None
        with PeakMemory() as pm:
            try:
                if backend is None:
                    model = src.model
                    cell.backend = {"dtype": str(src.compute_dtype()).replace("torch.", ""), "device": src.device}
                else:
                    model, settings = backend.quantize(src, qspec)
                    cell.backend = {"backend": backend.name, "kind": backend.kind, "settings": settings,
                                    "versions": backend.versions()}
                cell.quantize_seconds = time.perf_counter() - t0
                if cell.backend.get("settings", {}).get("identical_to_full_precision"):
                    model = None  # the source's own model: nothing to free, nothing to evaluate twice
                    same = self.run_cell(_Plan(plan.role, src, FULL_PRECISION, missing))
                    if same.status != "ok":
                        raise HubauditError(f"the full-precision cell failed: {same.reason}")
                    dec = ({"path": same.backend["decoding"], **({"reason": same.backend["decoding_reason"]}
                           if same.backend.get("decoding_reason") else {})} if same.backend.get("decoding") else None)
                    for m in missing:
                        rec = {"value": same.metrics[m.name], "n": same.n_items[m.name], "items": same.items[m.name],
                               "seconds": 0.0, "tokens": 0, "decoding": dec}
                        found[m.name] = rec
                        if self.store is not None:
                            self.store.put(src.identity, spec, self.fs_hash, m.name, keys[m.name], rec)
                    missing = []
                for m in missing:
                    res = evaluate(model, src.tokenizer, self.fs, [m], self.cfg, batch_size=self.batch_size,
                                   progress=self.progress, desc=f"{plan.role} {spec}")[m.name]
                    rec = {"value": res.value, "n": res.n, "items": res.items, "seconds": res.seconds, "tokens": res.tokens,
                           "decoding": res.decoding}
                    found[m.name] = rec
                    if self.store is not None:
                        self.store.put(src.identity, spec, self.fs_hash, m.name, keys[m.name], rec)
            except HubauditError as e:
                if backend is None:  # the model itself cannot be loaded or read: nothing to audit
                    raise
                cell.status, cell.reason = "error", str(e)
            except Exception as e:  # noqa: BLE001 - one failing backend must not end the audit
                log.debug("cell %s %s failed", plan.role, spec, exc_info=True)
                cell.status, cell.reason = "error", f"{type(e).__name__}: {e}"
            finally:
                if model is not None and backend is not None:
                    del model
                    gc.collect()
        cell.seconds = time.perf_counter() - t0
        cell.peak_rss_bytes, cell.peak_cuda_bytes = pm.peak_rss, pm.peak_cuda
        if self.store is not None and cell.status == "ok":
            self.store.put(src.identity, spec, self.fs_hash, "_cell", "", {
                "backend": cell.backend, "seconds": cell.seconds, "quantize_seconds": cell.quantize_seconds,
                "peak_rss_bytes": cell.peak_rss_bytes, "peak_cuda_bytes": cell.peak_cuda_bytes,
            })

    def run(self, plans: list[_Plan]) -> list[CellResult]:
        bar = None
        if self.progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plans), desc="audit", unit="cell")
        cells = []
        try:
            for i, plan in enumerate(plans):
                if bar:
                    bar.set_postfix_str(f"{plan.role} {plan.spec}")
                elif hasattr(self.progress, "set_description"):  # a caller's tqdm-like object: name the cell
                    self.progress.set_description(f"{plan.role} {plan.spec}")
                cell = self.run_cell(plan)
                cells.append(cell)
                if self.on_cell:
                    self.on_cell(cell)
                if bar:
                    bar.update(1)
                nxt = plans[i + 1].source if i + 1 < len(plans) else None
                if nxt is not plan.source:
                    plan.source.release()
                    gc.collect()
        finally:
            if bar:
                bar.close()
        return cells


def _record_decoding(cell: CellResult, decodings: list[dict | None]) -> None:
    """The cell's settings say how its text was generated: ``decoding: fast`` (hubaudit's greedy loop)
    or ``decoding: generate`` with ``decoding_reason``. Cells that generate nothing get no entry."""
    used = [d for d in decodings if d]
    if not used:
        return
    slow = [d for d in used if d.get("path") != "fast"]
    cell.backend["decoding"] = "generate" if slow else "fast"
    if slow and slow[0].get("reason"):
        cell.backend["decoding_reason"] = slow[0]["reason"]


def derive(cells: list[CellResult], specs: list[str], threshold: float, auc_retrain: float) -> tuple[dict, Verdict]:
    """Regained, retained, utility, PrivLeak and the verdict, from finished cells."""
    by = {(c.role, c.spec): c for c in cells}
    for c in cells:
        if "mia_auc" in c.metrics:
            c.metrics["privleak"] = privleak(c.metrics["mia_auc"], auc_retrain)
    base = by.get(("model", FULL_PRECISION))
    regained: dict[str, dict[str, float]] = {}
    retained: dict[str, dict[str, float]] = {}
    for spec in [FULL_PRECISION, *specs]:
        cell, ref = by.get(("model", spec)), by.get(("reference", spec))
        if cell is None or cell.status != "ok":
            continue
        if spec != FULL_PRECISION and base is not None and base.status == "ok":
            regained[spec] = {m: cell.metrics[m] - base.metrics[m] for m in cell.metrics if m in base.metrics and m != "mia_auc"}
            held = heldout_regained(cell, base)  # relearn on forget items: regain on the other items only
            if held is not None:
                regained[spec].update({m: v for m, v in held.items() if v is not None})
                for m in [m for m, v in held.items() if v is None]:
                    regained[spec].pop(m, None)
        if ref is not None and ref.status == "ok":
            retained[spec] = {
                m: cell.metrics[m] / ref.metrics[m] * 100 for m in ("verbmem_f", "knowmem_f", "knowmem_r")
                if m in cell.metrics and ref.metrics.get(m)
            }
    utility = {s: by[("model", s)].metrics["knowmem_r"] for s in [FULL_PRECISION, *specs]
               if ("model", s) in by and "knowmem_r" in by[("model", s)].metrics}
    worst = None
    kinds = {s: spec_kind(s) for s in specs}
    by_kind: dict[str, tuple] = {}  # the largest regain of each kind (quantization, recovery)
    for spec, deltas in regained.items():
        for m in VERDICT_METRICS:
            if m in deltas and (worst is None or deltas[m] > worst[2]):
                worst = (spec, m, deltas[m])
            k = kinds.get(spec, "quantization")
            if m in deltas and (k not in by_kind or deltas[m] > by_kind[k][2]):
                by_kind[k] = (spec, m, deltas[m])
    if worst is None:
        verdict = Verdict("incomplete", threshold, summary="no quantized cell could be evaluated, so no verdict")
    elif worst[2] >= threshold:
        kind = kinds.get(worst[0], "quantization")
        verdict = Verdict("fragile", threshold, worst[0], worst[1], worst[2],
                          f"fragile: {worst[0]} brings back {worst[2]:.1f} points of {LABELS[worst[1]]} "
                          f"(threshold {threshold:g}); the unlearning does not survive "
                          + ("quantization" if kind != "recovery" else "a relearning attack (recovery, not quantization)")
                          + _other_kind_note(by_kind, kind, threshold))
    else:
        verdict = Verdict("robust", threshold, worst[0], worst[1], worst[2],
                          f"robust: no spec brings back {threshold:g} points of a forget metric "
                          f"(largest: {worst[0]}, {worst[2]:+.1f} {LABELS[worst[1]]})")
    derived = {"regained": regained, "retained": retained, "utility": utility, "kinds": kinds,
               "max_regained_by_kind": {k: {"spec": v[0], "metric": v[1], "regained": v[2]} for k, v in by_kind.items()}}
    return derived, verdict


def _other_kind_note(by_kind: dict, kind: str, threshold: float) -> str:
    """When both kinds ran, what the other one did (so a fragile verdict says which kind regained)."""
    other = "recovery" if kind != "recovery" else "quantization"
    if other not in by_kind:
        return ""
    spec, m, v = by_kind[other]
    word = "relearning" if other == "recovery" else "quantization"
    verb = "also regains" if v >= threshold else "regains less"
    return f"; {word} {verb}: {spec} {v:+.1f} {LABELS[m]}"


def _chat_template_used(src: ModelSource, cfg: MetricConfig, metrics: list[Metric]) -> dict | None:
    """The chat template the prompts went through (TOFU-style metrics only), for the report; None if none."""
    if not cfg.chat_template or not any(getattr(m, "chat", False) for m in metrics):
        return None
    from .metrics.prompts import describe_chat_template

    return describe_chat_template(src.tokenizer)


def open_model(model, *, token: str | None = None, **kw) -> tuple[ModelSource, dict]:
    """A :class:`ModelSource` for a local folder or a Hub id (fetched and pinned), and its card metadata."""
    from .source import _card_data, fetch_model, parse_model_ref

    if isinstance(model, ModelSource):
        return model, _card_data(model.path)
    ref = parse_model_ref(model)
    if not ref.is_hub:
        from .source import check_causal_lm

        src = ModelSource(ref.path, name=str(model), **kw)
        check_causal_lm(src.path, src.name)
        return src, _card_data(ref.path)
    snap = fetch_model(ref, token=token, allow_pickle=kw.get("allow_pickle", False))
    src = ModelSource(snap.path, name=ref.repo_id, revision=snap.sha, repo_id=ref.repo_id, **kw)
    src.snapshot = snap
    return src, snap.card_data


def audit(
    model,
    *,
    reference=None,
    forget: str | Path | ForgetSet | None = None,
    specs: Iterable[str] | str = DEFAULT_SPECS,
    threshold: float = DEFAULT_THRESHOLD,
    metrics: Iterable[str] | str | None = None,
    retrain=None,
    auc_retrain: float | None = None,
    out: str | Path | None = None,
    store: str | Path | ResultStore | None | bool = None,
    fresh: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    metric_config: MetricConfig | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    token: str | None = None,
    memory_check: bool = True,
    progress: bool | object = True,
    on_cell: Callable[[CellResult], None] | None = None,
) -> AuditReport:
    """Audit an unlearned model: does quantization bring the forgotten knowledge back?

    Args:
        model: a model folder, a Hub id ``org/name[@revision]`` (fetched and pinned to its commit), or a
            :class:`~hubaudit.modeling.ModelSource`.
        reference: the original, pre-unlearning model (folder or Hub id); enables "knowledge
            retained". Default: the model card's ``base_model`` when it names one; ``False`` for none.
        forget: the forget set: a built-in name (default ``"synthetic"``), a MUSE-layout folder, or a
            :class:`~hubaudit.forget.ForgetSet`.
        specs: quantization specs (``"rtn:4,rtn:8"`` or a list); full precision is always included.
        threshold: points of a forget metric a spec must bring back for the verdict ``fragile``.
        metrics: metric names (``verbmem_f,knowmem_f,knowmem_r,mia_auc``); default: all the set supports.
        retrain: a model trained without the forget set; its MIA AUC is PrivLeak's baseline.
        auc_retrain: PrivLeak's baseline given as a number (else the forget set's, else 0.5).
        out: a folder for ``report.json``, ``report.md`` and ``report.png`` (written only on success;
            earlier reports there are moved to ``history/``).
        store: the results store: a path, a :class:`ResultStore`, None for the default file,
            False for none.
        fresh: ignore stored results (still store the new ones).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: items per batch (default: from a token budget).
        metric_config: metric settings (MUSE defaults).
        allow_pickle / trust_remote_code: off by default, for safety.
        token: a Hub token (default: ``HF_TOKEN`` or the saved login); never printed or stored.
        memory_check: refuse before loading a model that cannot fit (full precision + one copy).
        progress: progress bars on stderr; False for none; or a tqdm-like object (``set_description``
            with the cell, ``set_postfix_str`` with the metric, ``update`` with items done) for callers
            that show progress themselves (the Space).
        on_cell: called with each finished :class:`CellResult`.

    Returns:
        The :class:`~hubaudit.results.AuditReport`.

    Raises:
        HubauditError: any input problem (bad spec, missing model, bad forget set), before any work.

    Example:
        >>> report = audit("models/unlearned", reference="models/original", specs="rtn:4")  # doctest: +SKIP
        >>> report.verdict.label                                                               # doctest: +SKIP
        'fragile'
    """
    t_start = time.perf_counter()
    # Everything a user can get wrong is checked before any model is loaded.
    spec_list = [str(s) for s in parse_specs(specs)]
    if not threshold >= 0:
        raise HubauditError(f"--threshold must be a number of points >= 0, got {threshold}")
    if auc_retrain is not None and not 0 < auc_retrain < 1:
        raise HubauditError(f"--auc-retrain must be between 0 and 1, got {auc_retrain}")
    fs = load_forget_set(forget)
    metric_objs = resolve_metrics(metrics, fs)
    cfg = metric_config or MetricConfig()
    kw = dict(device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    src, card = open_model(model, token=token, **kw)
    reference_note = None
    if reference is None:
        from .source import base_model_of

        base = base_model_of(card)
        if base:
            try:
                reference = open_model(base, token=token, **kw)[0]
                reference_note = f"reference taken from the model card's base_model: {base}"
            except HubauditError as e:
                reference_note = f"the card's base_model '{base}' could not be used ({e})"
                log.warning(reference_note)
    ref = open_model(reference, token=token, **kw)[0] if reference not in (None, False) else None
    ret = open_model(retrain, token=token, **kw)[0] if retrain is not None else None
    if memory_check:
        for s in (src, ref, ret):
            if s is not None:
                s.check_memory(copies=2 if spec_list and s is not ret else 1)
    if out is not None:
        from .report import check_out_dir

        check_out_dir(out)
    if store is False:
        result_store = None
    elif isinstance(store, ResultStore):
        result_store = store
    else:
        result_store = ResultStore(store)

    plans = [_Plan("model", src, s, metric_objs) for s in [FULL_PRECISION, *spec_list]]
    if ref is not None:
        plans += [_Plan("reference", ref, s, metric_objs) for s in [FULL_PRECISION, *spec_list]]
    mia = [m for m in metric_objs if m.name in ("mia_auc", "tofu_tr_f")]  # PrivLeak's and forget quality's baselines
    if ret is not None and mia:
        plans.append(_Plan("retrain", ret, FULL_PRECISION, mia))

    auditor = Auditor(fs, cfg, result_store, fresh, batch_size, progress, on_cell)
    cells = auditor.run(plans)

    retrain_cell = next((c for c in cells if c.role == "retrain" and c.status == "ok" and "mia_auc" in c.metrics), None)
    if retrain_cell is not None:
        auc_ret, auc_src = retrain_cell.metrics["mia_auc"], f"retrained model {ret.name}"
    elif auc_retrain is not None:
        auc_ret, auc_src = auc_retrain, "given"
    elif fs.auc_retrain is not None:
        auc_ret, auc_src = fs.auc_retrain, f"forget set '{fs.name}' metadata"
    else:
        auc_ret, auc_src = ASSUMED_AUC_RETRAIN, "assumed 0.5 (no retrained model or metadata)"
    derived, verdict = derive(cells, spec_list, threshold, auc_ret)
    derived["auc_retrain"], derived["auc_retrain_source"] = auc_ret, auc_src
    if ref is None:
        derived["retained_note"] = "no reference (original) model given, so knowledge retained could not be computed"
    if reference_note:
        derived["reference_note"] = reference_note
    from .metrics.tofu import forget_quality_by_spec

    fq = forget_quality_by_spec(cells)
    if fq:
        derived["forget_quality"] = fq  # TOFU: KS-test p-value of truth ratios vs the retrain model

    def model_info(s: ModelSource | None):
        if s is None:
            return None
        info = {"name": s.name, "path": str(s.path), "identity": s.identity, "repo_id": s.repo_id, "sha": s.revision}
        snap = getattr(s, "snapshot", None)
        if snap is not None:
            info.update(requested_revision=snap.requested_revision, fetched_bytes=snap.fetched_bytes,
                        repo_bytes=snap.repo_bytes)
        return info

    inputs = {
        "model": model_info(src),
        "reference": model_info(ref),
        "retrain": model_info(ret),
        "forget": {"name": fs.name, "source": fs.source, "hash": fs.content_hash(), "sizes": fs.sizes()},
        "specs": spec_list,
        "metrics": [m.name for m in metric_objs],
        "metric_settings": {m.name: m.settings(cfg) for m in metric_objs},
        "chat_template": _chat_template_used(src, cfg, metric_objs),
        "threshold": threshold,
        "device": src.device,
        "dtype": str(src.compute_dtype()).replace("torch.", ""),
        "store": None if result_store is None else str(result_store.path),
        "fresh": fresh,
    }
    report = AuditReport(
        inputs=inputs, cells=cells, derived=derived, verdict=verdict, hubaudit_version=_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        timings={"total_seconds": time.perf_counter() - t_start,
                 "computed_cells": sum(1 for c in cells if not c.reused and c.status == "ok"),
                 "reused_cells": sum(1 for c in cells if c.reused)},
    )
    if out is not None:
        from .report import write_report

        write_report(report, out)
    return report
