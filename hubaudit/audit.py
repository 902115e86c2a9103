"""The audit: one model (and optionally its original) at full precision and under every spec.

Flow: read the forget set, choose the metrics it supports, then for each model evaluate full
precision once and each spec once, one quantized copy in memory at a time. Every finished metric is
written to the results store at once, so an interrupted audit resumes where it stopped and a model
audited before (the same original behind six unlearned variants) is not evaluated again.

This module is the face: the request, the plan of cells and the :class:`~hubaudit.plan.Auditor` that runs them
are :mod:`hubaudit.plan`'s (shared with :mod:`hubaudit.sweep`); the derived figures and the verdict are
:mod:`hubaudit.verdict`'s.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import HubauditError
from .forget import ForgetSet, load_forget_set
from .metrics import MetricConfig, resolve_metrics
from .metrics.base import Metric
from .modeling import ModelSource
from .plan import (DEFAULT_SPECS, AuditRequest, Auditor, Cell, check_specs, chat_template_used,  # noqa: F401
                   metric_key, open_model, plan_cells, resolve_specs)
from .results import AuditReport, CellResult
from .store import ResultStore
from .verdict import (ASSUMED_AUC_RETRAIN, DEFAULT_ALPHA, DEFAULT_THRESHOLD, MIN_FORGOTTEN,  # noqa: F401
                      MIN_ITEMS_ROBUST, MIN_ORIGINAL, NOT_UNLEARNED_RETAINED, derive, heldout_regained)

log = logging.getLogger("hubaudit")

def _version() -> str:
    from . import __version__

    return __version__


def audit(
    model,
    *,
    reference=None,
    forget: str | Path | ForgetSet | None = None,
    retrain=None,
    out: str | Path | None = None,
    store: str | Path | ResultStore | None | bool = None,
    token: str | None = None,
    progress: bool | object = True,
    on_cell: Callable[[CellResult], None] | None = None,
    retain_logs: str | Path | None = None,
    request: AuditRequest | None = None,
    **options,
) -> AuditReport:
    """Audit an unlearned model: does quantization bring the forgotten knowledge back?

    Args:
        model: a model folder, a Hub id ``org/name[@revision]`` (fetched and pinned to its commit), or a
            :class:`~hubaudit.modeling.ModelSource`.
        reference: the original, pre-unlearning model (folder or Hub id); enables "knowledge
            retained". Default: the model card's ``base_model`` when it names one; ``False`` for none.
        forget: the forget set: a built-in name (default ``"synthetic"``), a MUSE-layout folder, or a
            :class:`~hubaudit.forget.ForgetSet`.
        retrain: a model trained without the forget set; its MIA AUC is PrivLeak's baseline.
        retain_logs: TOFU forget quality's baseline when there is no ``retrain`` model: the retain model's
            open-unlearning eval log (``TOFU_EVAL.json``, as its ``retain_logs_path``) or a JSON list of truth ratios.
        out: a folder for ``report.json``, ``report.md`` and ``report.png`` (written only on success;
            earlier reports there are moved to ``history/``).
        store: the results store: a path, a :class:`ResultStore`, None for the default file,
            False for none.
        token: a Hub token (default: ``HF_TOKEN`` or the saved login); never printed or stored.
        progress: progress bars on stderr; False for none; or a tqdm-like object (``set_description``
            with the cell, ``set_postfix_str`` with the metric, ``update`` with items done) for callers
            that show progress themselves (the Space).
        on_cell: called with each finished :class:`CellResult`.
        request: the audit's parameters as an :class:`~hubaudit.plan.AuditRequest`; or give its fields as
            keywords (``specs="rtn:4"``, ``threshold``, ``alpha``, ``metrics``, ``auc_retrain``, ``device``,
            ``dtype``, ``batch_size``, ``metric_config``, ``allow_pickle``, ``trust_remote_code``, ``fresh``,
            ``memory_check``, ``all_files``, ``control``: see there for each and its default). ``control``: a model
            that never learned the forget set; every spec also runs on it and the verdict counts only regain beyond
            it (:mod:`hubaudit.calibrate`).

    Returns:
        The :class:`~hubaudit.results.AuditReport`.

    Raises:
        HubauditError: any input problem (bad spec, missing model, bad forget set), before any work.

    Example:
        >>> report = audit("./models/unlearned", reference="./models/original", specs="rtn:4")  # doctest: +SKIP
        >>> report.verdict.label                                                               # doctest: +SKIP
        'fragile'
    """
    t_start = time.perf_counter()
    # Everything a user can get wrong is checked before any model is loaded.
    req = AuditRequest.of(request, options)
    fs = load_forget_set(forget)
    if retain_logs is not None:
        from .metrics.tofu import retain_ratios_from_logs

        fs.meta["retain_truth_ratios"] = retain_ratios_from_logs(retain_logs)
    metric_objs = resolve_metrics(req.metrics, fs)
    cfg = req.metric_config
    kw = req.model_options
    src, card = open_model(model, token=token, **kw)
    reference_note = None
    if reference is None:
        from .source import card_reference

        # a card is its owner's text: its base_model is opened only as a public Hub id (token=False), never
        # from disk; any other original is passed with --reference
        base, reference_note = card_reference(card)
        if base is not None:
            try:
                reference = open_model(base, **kw)[0]
                reference_note = f"reference taken from the model card's base_model: {base.text} (a public Hub model)"
            except HubauditError as e:
                reference_note = str(e)
        if reference_note and reference is None:
            log.warning("hubaudit: %s", reference_note)
    specs = resolve_specs(req, token=token)
    check_specs(specs, src)
    ref = open_model(reference, token=token, **kw)[0] if reference not in (None, False) else None
    ret = open_model(retrain, token=token, **kw)[0] if retrain is not None else None
    ctl = open_model(req.control, token=token, **kw)[0] if req.control is not None else None
    if req.memory_check:
        for s in (src, ref, ret, ctl):
            if s is not None:
                s.check_memory(copies=2 if specs and s is not ret else 1)
    if out is not None:
        from .report import check_out_dir

        check_out_dir(out)
    if store is False:
        result_store = None
    elif isinstance(store, ResultStore):
        result_store = store
    else:
        result_store = ResultStore(store)

    cells = plan_cells(specs, metric_objs, model=src, reference=ref, retrain=ret, control=ctl)
    auditor = Auditor(fs, cfg, result_store, req.fresh, req.batch_size, progress, on_cell)
    seq = None
    if req.sequential:
        from .seqaudit import run_sequential

        results, seq = run_sequential(auditor, cells, threshold=req.threshold, alpha=req.alpha, seed=req.seed,
                                      all_metrics=req.metrics is not None)
    else:
        results = auditor.run(cells)
    report = build_report(results, src=src, ref=ref, ret=ret, fs=fs, metric_objs=metric_objs, cfg=cfg,
                          specs=[str(s) for s in specs], threshold=req.threshold, alpha=req.alpha,
                          auc_retrain=req.auc_retrain, store=result_store, fresh=req.fresh,
                          reference_note=reference_note, chat_template=chat_template_used(src, cfg, metric_objs),
                          started=t_start, ctl=ctl)
    if seq is not None:
        from .seqaudit import apply_sequential

        apply_sequential(report, seq)
    if out is not None:
        from .report import write_report

        write_report(report, out)
    return report


def build_report(cells: list[CellResult], *, src, ref, ret, fs: ForgetSet, metric_objs: list[Metric],
                 cfg: MetricConfig, specs: list[str], threshold: float, alpha: float, auc_retrain: float | None,
                 store: ResultStore | None, fresh: bool, reference_note: str | None, chat_template: dict | None,
                 started: float, ctl=None) -> AuditReport:
    """The :class:`AuditReport` of finished cells: PrivLeak's baseline, the derived figures, the verdict and
    the inputs. ``src``/``ref``/``ret`` are the models (:class:`ModelSource`, or anything with its ``name``,
    ``path``, ``identity``, ``repo_id``, ``revision``, ``device`` and ``compute_dtype()``); used by
    :func:`audit` and by a sweep, whose cells were computed elsewhere. ``ctl``: the control model, whose cells
    (role ``control``) calibrate the verdict (:func:`hubaudit.calibrate.derive_calibrated`)."""
    spec_list = specs
    retrain_cell = next((c for c in cells if c.role == "retrain" and c.status == "ok" and "mia_auc" in c.metrics), None)
    if retrain_cell is not None:
        auc_ret, auc_src = retrain_cell.metrics["mia_auc"], f"retrained model {ret.name}"
    elif auc_retrain is not None:
        auc_ret, auc_src = auc_retrain, "given"
    elif fs.auc_retrain is not None:
        auc_ret, auc_src = fs.auc_retrain, f"forget set '{fs.name}' metadata"
    else:
        auc_ret, auc_src = ASSUMED_AUC_RETRAIN, "assumed 0.5 (no retrained model or metadata)"
    from .calibrate import derive_calibrated

    derived, verdict = derive_calibrated(cells, spec_list, threshold, auc_ret, alpha,
                                         control_name=ctl.name if ctl is not None else None)
    derived["auc_retrain"], derived["auc_retrain_source"] = auc_ret, auc_src
    if ref is None:
        derived["retained_note"] = "no reference (original) model given, so knowledge retained could not be computed"
    if reference_note:
        derived["reference_note"] = reference_note
    from .metrics.tofu import forget_quality_by_spec

    fq = forget_quality_by_spec(cells, fs.meta.get("retain_truth_ratios"))
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
        "control": model_info(ctl),
        "forget": {"name": fs.name, "source": fs.source, "hash": fs.content_hash(), "sizes": fs.sizes(),
                   **({"mmlu_subjects": fs.meta["mmlu_subjects"]} if fs.meta.get("mmlu_subjects") else {})},
        "specs": spec_list,
        "metrics": [m.name for m in metric_objs],
        "metric_settings": {m.name: m.settings(cfg) for m in metric_objs},
        "chat_template": chat_template,
        "threshold": threshold,
        "alpha": alpha,
        "device": src.device,
        "dtype": str(src.compute_dtype()).replace("torch.", ""),
        "dtype_reason": src.compute_dtype_reason() if hasattr(src, "compute_dtype_reason") else None,
        "store": None if store is None else str(store.path),
        "fresh": fresh,
    }
    return AuditReport(
        inputs=inputs, cells=cells, derived=derived, verdict=verdict, hubaudit_version=_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        timings={"total_seconds": time.perf_counter() - started,
                 "computed_cells": sum(1 for c in cells if not c.reused and c.status == "ok"),
                 "reused_cells": sum(1 for c in cells if c.reused)},
    )
