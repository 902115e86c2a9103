"""One request, one plan, several executors.

An :class:`AuditRequest` holds the audit's parameters (specs, threshold, alpha, metrics, device, dtype, ...),
checked once, with their defaults in one place. :func:`resolve_specs` pins what the specs need (a ``file:``
artifact's hash or commit) once; :func:`plan_cells` makes the cells of one audited model (its original and its
retrained model) from them: :class:`Cell` objects carrying the typed spec (:class:`~hubaudit.attacks.AttackSpec`,
artifact included) to the :class:`Auditor` that runs them. :func:`hubaudit.audit` runs the plan here;
:func:`hubaudit.sweep.sweep` runs the same cells (looked up in the store here, computed by workers, locally or on
Ray); the Space's worker and the Action go through :func:`hubaudit.audit`.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .attacks import FULL_PRECISION, AttackSpec, TrainingRows, get_attack, parse_specs
from .errors import HubauditError, SpecError
from .forget import ForgetSet
from .metrics import MetricConfig, evaluate
from .metrics.base import Metric
from .modeling import ModelSource
from .results import CellResult
from .store import ResultStore
from .verdict import DEFAULT_ALPHA, DEFAULT_THRESHOLD

log = logging.getLogger("hubaudit")

DEFAULT_SPECS = ("cast:bf16", "rtn:8", "rtn:4", "rtn:4:g128")


@dataclass(frozen=True)
class AuditRequest:
    """What to audit with, for one model or a sweep of many: checked when made (a one-line
    :class:`~hubaudit.errors.HubauditError` for what a user got wrong), the one place of every default.

    Args:
        specs: attack specs (``"rtn:4,rtn:8"`` or a list), parsed and validated; full precision is always
            included. Kept as :class:`~hubaudit.attacks.AttackSpec` objects, duplicates dropped.
        threshold: points of a forget metric a spec must bring back (on average) for ``fragile``.
        alpha: the family-wise error level over every (spec, forget metric) pair (Holm).
        metrics: metric names (``"verbmem_f,knowmem_f"`` or a list); None: all the forget set supports.
        auc_retrain: PrivLeak's baseline given as a number (else the retrained model's, the forget set's, 0.5).
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: the compute dtype (``auto``, ``float32``, ``bfloat16``, ``float16``).
        batch_size: items per batch (None: from a token budget).
        metric_config: metric settings (MUSE defaults).
        allow_pickle / trust_remote_code: off by default, for safety.
        fresh: ignore stored results (still store the new ones).
        memory_check: refuse before loading a model that cannot fit (full precision + one copy).
        all_files: a ``file:`` spec naming a GGUF repository or folder stands for every GGUF file in it.
        control: a model that never learned the forget set (a retain-only model, the original's own base;
            folder or Hub id): every spec also runs on it and the verdict counts only regain beyond what the
            same attack does to it (:mod:`hubaudit.calibrate`). None: not calibrated.
        sequential: draw the items in a random order (``seed``) and stop each (spec, forget metric) pair, and
            the audit, once an anytime-valid test decides it (:mod:`hubaudit.seqaudit`).
        seed: the draw order's seed (``sequential`` only).
    """

    specs: tuple[AttackSpec, ...] | str = DEFAULT_SPECS
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    metrics: tuple[str, ...] | str | None = None
    auc_retrain: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    metric_config: MetricConfig = field(default_factory=MetricConfig)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    fresh: bool = False
    memory_check: bool = True
    all_files: bool = False
    control: object = None  # a folder, Hub id or ModelSource
    sequential: bool = False
    seed: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalized once, here
        set_("specs", tuple(parse_specs(self.specs)))
        if isinstance(self.metrics, str):
            set_("metrics", tuple(m.strip() for m in self.metrics.split(",") if m.strip()) or None)
        elif self.metrics is not None:
            set_("metrics", tuple(self.metrics))
        if self.metric_config is None:
            set_("metric_config", MetricConfig())
        if not self.threshold >= 0:
            raise HubauditError(f"--threshold must be a number of points >= 0, got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise HubauditError(f"--alpha must be between 0 and 1 (exclusive), got {self.alpha}")
        from .modeling import DTYPE_CHOICES

        if self.dtype not in DTYPE_CHOICES:
            raise HubauditError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got '{self.dtype}'")
        if self.auc_retrain is not None and not 0 < self.auc_retrain < 1:
            raise HubauditError(f"--auc-retrain must be between 0 and 1, got {self.auc_retrain}")
        if self.all_files and not any(get_attack(s)[0].artifact for s in self.specs):
            raise HubauditError("--all-files goes with a file: spec naming a GGUF repository or folder "
                                "(file:ORG/NAME-GGUF)")
        if self.sequential and self.control is not None:
            raise HubauditError("--sequential does not calibrate against a --control yet: drop one of them")

    @classmethod
    def of(cls, request: "AuditRequest | None", options: dict) -> "AuditRequest":
        """``request``, or one made from keyword ``options`` (a caller's ``audit(..., specs=..., alpha=...)``);
        not both."""
        if request is None:
            return cls(**options)
        if options:
            raise TypeError(f"give an AuditRequest or its fields ({', '.join(sorted(options))}), not both")
        return request

    @property
    def model_options(self) -> dict:
        """How every model of the request is opened (:func:`open_model`)."""
        return dict(device=self.device, dtype=self.dtype, allow_pickle=self.allow_pickle,
                    trust_remote_code=self.trust_remote_code)


def resolve_specs(request: AuditRequest, *, token: str | None = None) -> list[AttackSpec]:
    """Each spec's :meth:`~hubaudit.attacks.Attack.resolve`, once for the audit or the sweep: a ``file:``
    artifact is found and pinned (``--all-files``: one spec per GGUF file), nothing is loaded. The typed
    specs the plan's cells carry."""
    out: list[AttackSpec] = []
    for s in request.specs:
        attack, spec = get_attack(s)
        for x in attack.resolve(spec, token=token, all_files=request.all_files, allow_pickle=request.allow_pickle):
            if x not in out:
                out.append(x)
    return out


def check_specs(specs: list[AttackSpec], src: ModelSource) -> None:
    """Each resolved spec checked against the audited model (a ``file:`` artifact must be a build of it), before
    any weights are loaded."""
    for s in specs:
        get_attack(s)[0].check(s, src)


def is_artifact(spec: AttackSpec | str) -> bool:
    """A published build of the audited model (``file:``): it applies to the audited model only."""
    return spec != FULL_PRECISION and get_attack(spec)[0].artifact


@dataclass
class Cell:
    """One cell of the plan: a model (``role``: model, reference, retrain) at full precision (``spec`` is
    ``"fp"``) or under one typed spec, and the metrics it is measured on."""

    role: str
    source: ModelSource
    spec: AttackSpec | str  # an AttackSpec, or FULL_PRECISION
    metrics: list[Metric]
    reference: ModelSource | None = None  # the original, for an attack that needs one (``ablate:direction``)

    @property
    def text(self) -> str:
        """The spec as the store keys it and the report names it."""
        return str(self.spec)


def plan_cells(specs: list[AttackSpec], metrics: list[Metric], *, model, reference=None, retrain=None,
               control=None) -> list[Cell]:
    """The cells of one audit: the audited model at full precision and under every spec; its original
    (reference) at full precision and under every spec that is a recipe (a published build, ``file:``, is a
    build of the audited model only); the retrained model at full precision on the metrics it is a baseline
    for (MIA AUC, TOFU's truth ratio); the control (``control``) like the original: at full precision and under
    every recipe. A spec whose attack needs the original (``ablate:direction``) is refused without one
    (:class:`SpecError`), before any model is loaded; the control's cells get the original too, so the
    direction ablated on the control is the control-vs-original one."""
    if reference is None:
        check_reference_specs(specs)
    cells = [Cell("model", model, s, metrics, reference) for s in [FULL_PRECISION, *specs]]
    if control is not None:
        cells += [Cell("control", control, s, metrics, reference) for s in [FULL_PRECISION, *specs] if not is_artifact(s)]
    if reference is not None:
        cells += [Cell("reference", reference, s, metrics, reference) for s in [FULL_PRECISION, *specs]
                  if not is_artifact(s)]
    # measured on the retrained model: PrivLeak's baseline, forget quality's (each score declares it)
    baseline = [m for m in metrics if any(s.retrain_baseline for s in m.scores)]
    if retrain is not None and baseline:
        cells.append(Cell("retrain", retrain, FULL_PRECISION, baseline))
    return cells


def needs_reference(spec: AttackSpec | str) -> bool:
    """The spec's attack compares the model with its original (:attr:`~hubaudit.attacks.Attack.needs_reference`)."""
    return spec != FULL_PRECISION and get_attack(spec)[0].needs_reference


def check_reference_specs(specs) -> None:
    """Refuse specs that need an original (``ablate:direction``) when the audit has none."""
    missing = [str(s) for s in specs if needs_reference(s)]
    if missing:
        raise SpecError(f"{', '.join(missing)} compares the model with its original: pass --reference ORIGINAL "
                        f"(reference= in Python), or drop {'it' if len(missing) == 1 else 'them'}")


def metric_key(metric: Metric, cfg: MetricConfig, source: ModelSource, spec: str = FULL_PRECISION,
               reference: ModelSource | None = None) -> str:
    """What a stored value depends on besides model, spec and forget set: the metric's version and
    settings, the device type and compute dtype, and for a quantized cell the versions of the backend's
    libraries (a new bitsandbytes may round differently) and, for a published artifact (``file:``), its
    pinned identity (file sha256 or Hub commit), and what the backend adds (:meth:`Attack.cache_key`: the
    dtype a ``cast:`` cell computes in)."""
    key = {"v": metric.version, "settings": metric.settings(cfg), "device": source.device.split(":")[0],
           "dtype": str(source.compute_dtype()).replace("torch.", "")}
    if type(metric).prompt_key is not Metric.prompt_key:  # what shapes its prompts: a rendered example's hash
        key["prompt"] = metric.prompt_key(cfg, source.tokenizer)
    if spec != FULL_PRECISION:
        try:
            backend, qspec = get_attack(spec)
            key["versions"] = backend.versions()
            artifact = backend.identity(qspec)  # a published file: its sha256 or commit, never reused for another
            if artifact:
                key["artifact"] = artifact
            extra = backend.cache_key(qspec, source)
            if extra:
                key["cell"] = extra
            if backend.needs_reference and reference is not None:  # the attack read the original too
                key["reference"] = reference.identity
        except HubauditError:
            pass
    return json.dumps(key, sort_keys=True)


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

    def _stored(self, plan: Cell) -> tuple[dict, dict, dict | None]:
        """(metric keys, stored records by metric name, the stored ``_cell`` record) of a cell."""
        src, spec = plan.source, plan.text
        keys = {m.name: metric_key(m, self.cfg, src, plan.spec, plan.reference) for m in plan.metrics}
        found: dict[str, dict] = {}
        info = None
        if self.store is not None and not self.fresh:
            for m in plan.metrics:
                rec = self.store.get(src.identity, spec, self.fs_hash, m.name, keys[m.name])
                if rec is not None:
                    found[m.name] = rec
            info = self.store.get(src.identity, spec, self.fs_hash, "_cell", "")
        return keys, found, info

    def lookup(self, plan: Cell) -> CellResult | None:
        """The cell from the store when every metric of it is there (nothing is loaded), else None. The
        plan's source needs only ``identity``, ``device`` and ``compute_dtype()`` (a sweep asks this before
        it sends the cell to a worker)."""
        if self.store is None or self.fresh:
            return None
        _, found, _ = self._stored(plan)
        if any(m.name not in found for m in plan.metrics):
            return None
        return self.run_cell(plan)

    def run_cell(self, plan: Cell) -> CellResult:
        """One cell: stored metrics are reused, missing ones computed (and stored at once)."""
        cell = CellResult(role=plan.role, spec=plan.text)
        keys, found, info = self._stored(plan)
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

    def _compute(self, plan: Cell, cell: CellResult, missing: list[Metric], keys: dict, found: dict) -> None:
        from .memory import PeakMemory

        src, spec = plan.source, plan.text
        backend = None
        if plan.spec != FULL_PRECISION:
            backend, qspec = get_attack(plan.spec)
            reason = backend.unavailable_reason()
            if reason:
                cell.status, cell.reason = "skipped", reason
                return
        t0 = time.perf_counter()
        model = None
        with PeakMemory() as pm:
            try:
                if backend is None:
                    model = src.model
                    cell.backend = {"dtype": str(src.compute_dtype()).replace("torch.", ""), "device": src.device}
                else:
                    extra = {"reference": plan.reference} if backend.needs_reference else {}
                    model, settings = backend.build(src, qspec, rows=self._training_rows(backend, qspec, src), **extra)
                    cell.backend = {"backend": backend.name, "kind": backend.kind, "settings": settings,
                                    "versions": backend.versions()}
                cell.quantize_seconds = time.perf_counter() - t0
                if cell.backend.get("settings", {}).get("identical_to_full_precision"):
                    model = None  # the source's own model: nothing to free, nothing to evaluate twice
                    same = self.run_cell(Cell(plan.role, src, FULL_PRECISION, missing))
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

    def _training_rows(self, attack, spec, src: ModelSource) -> TrainingRows | None:
        """The token rows a training attack asked for (:meth:`~hubaudit.attacks.Attack.rows_request`), built from
        the forget set in the metrics' prompt forms; None for every other attack."""
        req = attack.rows_request(spec)
        if req is None:
            return None
        from .metrics.training import training_rows

        rows, trained = training_rows(self.fs, src.tokenizer, req.data, req.frac, answers=req.answers)
        return TrainingRows(rows, trained, description=f"forget set '{self.fs.name}'")

    def run(self, plans: list[Cell]) -> list[CellResult]:
        bar = None
        if self.progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plans), desc="audit", unit="cell")
        cells = []
        try:
            for i, plan in enumerate(plans):
                if bar:
                    bar.set_postfix_str(f"{plan.role} {plan.text}")
                elif hasattr(self.progress, "set_description"):  # a caller's tqdm-like object: name the cell
                    self.progress.set_description(f"{plan.role} {plan.text}")
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


def chat_template_used(src: ModelSource, cfg: MetricConfig, metrics: list[Metric]) -> dict | None:
    """The chat template the prompts went through (TOFU-style metrics only), for the report; None if none."""
    if not cfg.chat_template or not any(getattr(m, "chat", False) for m in metrics):
        return None
    from .metrics.prompts import PromptFormat, describe_chat_template

    return describe_chat_template(src.tokenizer, PromptFormat.from_config(src.tokenizer, cfg))


def open_model(model, *, token: str | None = None, **kw) -> tuple[ModelSource, dict]:
    """A :class:`ModelSource` for a local folder or a Hub id (fetched and pinned), and its card metadata."""
    from .source import ModelRef, _card_data, fetch_model, parse_model_ref

    if isinstance(model, ModelSource):
        return model, _card_data(model.path)
    ref = model if isinstance(model, ModelRef) else parse_model_ref(model)
    if not ref.is_hub:
        from .source import check_causal_lm

        src = ModelSource(ref.path, name=str(model), **kw)
        check_causal_lm(src.path, src.name)
        _check_weights(src)
        return src, _card_data(ref.path)
    snap = fetch_model(ref, token=token, allow_pickle=kw.get("allow_pickle", False))
    src = ModelSource(snap.path, name=ref.repo_id, revision=snap.sha, repo_id=ref.repo_id, **kw)
    src.snapshot = snap
    _check_weights(src)
    return src, snap.card_data


def _check_weights(src: ModelSource) -> None:
    """The weights fill the model the config declares (:func:`~hubaudit.weights.check_weights`), before any load."""
    from .weights import check_weights

    if Path(src.path).is_dir():
        check_weights(src.path, src.name, trust_remote_code=getattr(src, "trust_remote_code", False))

