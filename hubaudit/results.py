"""The values an audit produces, as typed records with JSON in and out (``SCHEMA_VERSION``).

report.json is :meth:`AuditReport.to_json`; its layout is written down as a JSON Schema (draft 2020-12) in
``hubaudit/schema/report.schema.json`` (:func:`report_schema`), whose ``version`` is :data:`SCHEMA_VERSION`, and
documented page by page in ``docs/reference/report-schema.md``. A change of the layout bumps both; older
layouts in :data:`READABLE_VERSIONS` still load.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 5  # 5: derived.sequential.not_unlearned (decided before any spec); 4: derived.statistics.not_counted (metrics the original never knew); 3: the control (inputs.control, derived calibration tables, retain_effect) and derived["sequential"]; 2: the verdict's uncertainty (interval, p-values, items) and derived["changes"]
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # version 1 reports load with the new verdict fields empty
SCHEMA_DIR = Path(__file__).parent / "schema"

# What each metric is (label, scale, whether the verdict counts it, ...): hubaudit.metrics.scores.


@dataclass(init=False)
class CellResult:
    """One model at one precision.

    Attributes:
        role: ``model`` (the audited model), ``reference`` (the original) or ``retrain``.
        spec: ``fp`` (as stored, full precision) or an attack spec (``rtn:4``, ``prune:0.2``).
        status: ``ok``, ``skipped`` (attack unavailable here; ``reason`` says why) or ``error``.
        metrics: metric name -> value (ROUGE-L F1 x 100; ``mia_auc`` in 0..1; ``privleak`` in %).
        n_items: metric name -> items scored.
        seconds: wall time spent on this cell in the run that computed it (attack + metrics).
        peak_rss_bytes / peak_cuda_bytes: peak memory while the cell was computed.
        attack: what the attack did: its name (``backend``), ``kind``, ``settings`` and library ``versions``;
            for ``fp`` the dtype and device. Written as ``backend`` in report.json (its name there since
            version 1); :attr:`backend` is the same dict under that name.
        reused: every metric came from the results store.
        items: metric name -> per-item records (score, output).
    """

    role: str
    spec: str
    status: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    quantize_seconds: float = 0.0
    tokens: int = 0
    peak_rss_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    attack: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    reused: bool = False
    items: dict[str, list] = field(default_factory=dict)

    def __init__(self, role: str, spec: str, status: str = "ok", metrics: dict | None = None,
                 n_items: dict | None = None, seconds: float = 0.0, quantize_seconds: float = 0.0, tokens: int = 0,
                 peak_rss_bytes: int | None = None, peak_cuda_bytes: int | None = None,
                 attack: dict | None = None, reason: str | None = None, reused: bool = False,
                 items: dict | None = None, *, backend: dict | None = None):
        if attack is not None and backend is not None:
            raise TypeError("give attack or backend (its older name), not both")
        self.role, self.spec, self.status = role, spec, status
        self.metrics, self.n_items = dict(metrics or {}), dict(n_items or {})
        self.seconds, self.quantize_seconds, self.tokens = seconds, quantize_seconds, tokens
        self.peak_rss_bytes, self.peak_cuda_bytes = peak_rss_bytes, peak_cuda_bytes
        self.attack = attack if attack is not None else (backend if backend is not None else {})
        self.reason, self.reused, self.items = reason, reused, dict(items or {})

    @property
    def backend(self) -> dict[str, Any]:
        """:attr:`attack` under its older name (report.json's key)."""
        return self.attack

    @backend.setter
    def backend(self, value: dict[str, Any]) -> None:
        self.attack = value

    def to_json(self, items: bool = True) -> dict:
        """The cell as report.json holds it (``attack`` under its key ``backend``)."""
        d = {("backend" if k == "attack" else k): v for k, v in asdict(self).items()}
        if not items:
            d.pop("items", None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CellResult":
        d = dict(d)
        if "backend" in d:
            d["attack"] = d.pop("backend")
        return cls(**d)


# The verdict's labels, in the order the audit asks its questions.
VERDICT_LABELS = ("incomplete", "not-unlearned", "fragile", "robust", "inconclusive")


@dataclass
class Verdict:
    """What the audit concludes, with the evidence it rests on. Labels, asked in this order:

    - ``incomplete``: no quantized cell could be evaluated (or nothing had per-item scores), or the evidence
      says ``robust`` but a requested spec was not evaluated (failed or skipped: named in the summary);
    - ``not-unlearned``: in full precision the model keeps most of what the original knows on a forget
      metric (knowledge retained at the lower end of its interval >= 80%); needs the original model;
    - ``fragile``: some spec brings back at least ``threshold`` points of a forget metric on average,
      and the per-item change is significant (one-sided sign test, Holm over the whole grid, ``alpha``);
    - ``robust``: for every (spec, forget metric) the 95% interval of the change ends below ``threshold``,
      each on at least 20 items;
    - ``inconclusive``: neither; ``items_needed`` estimates how many items would decide it.

    ``worst_spec``/``worst_metric``/``max_regained`` name the pair the verdict rests on (for ``fragile``
    the significant pair with the largest regain, otherwise the pair with the largest mean regain, or
    the one that kept the question open); ``ci`` is its 95% interval, ``p_value`` its Holm-adjusted and
    ``p_raw`` its raw one-sided sign-test p-value, over ``n_items`` items of which ``up`` went up and
    ``down`` went down; ``tests`` is the number of (spec, metric) pairs tested. ``summary`` says it in one
    line of words.
    """

    label: str
    threshold: float
    worst_spec: str | None = None
    worst_metric: str | None = None
    max_regained: float | None = None
    summary: str = ""
    alpha: float | None = None
    ci: list[float] | None = None
    p_value: float | None = None
    p_raw: float | None = None
    n_items: int | None = None
    up: int | None = None
    down: int | None = None
    tests: int | None = None
    items_needed: int | None = None
    retained: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        """The verdict as report.json holds it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        """A verdict from report.json (any of :data:`READABLE_VERSIONS`: fields a version lacks stay None)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def evidence(self) -> str:
        """The figure with its uncertainty, for tables and outputs: ``+9.9 [+4.2, +16.5], p = 0.008``."""
        if self.max_regained is None:
            return ""
        text = f"{self.max_regained:+.1f}"
        if self.ci:
            text += f" [{self.ci[0]:+.1f}, {self.ci[1]:+.1f}]"
        if self.p_value is not None:
            text += f", p = {self.p_value:.2g}"
        return text


def parse_labels(text: str) -> frozenset[str]:
    """A gate's labels, ``fragile,not-unlearned`` (any case, spaces allowed); ``none`` -> no label.

    Raises:
        ValueError: with the unknown labels (or the text, when it names none) as its message.
    """
    labels = {x.strip().lower() for x in text.split(",") if x.strip()}
    if labels == {"none"}:
        return frozenset()
    bad = sorted(labels - set(VERDICT_LABELS))
    if bad or not labels:
        raise ValueError(", ".join(bad) or repr(text))
    return frozenset(labels)


def change_text(change: dict | None) -> str:
    """A per-item change from ``derived["changes"]`` as ``+9.9 [+4.2, +16.5]``; empty when none."""
    if not change or change.get("mean") is None:
        return ""
    ci = change.get("ci") or [None, None]
    if ci[0] is None:
        return f"{change['mean']:+.1f}"
    return f"{change['mean']:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]"


def largest_change(derived: dict, spec: str) -> tuple[str, dict] | None:
    """(metric, change) of the forget metric a spec moved up most, from ``derived["changes"]`` (which holds the
    verdict's metrics only; the first of equals in its order)."""
    ch = (derived.get("changes") or {}).get(spec) or {}
    ms = [m for m in ch if (ch[m] or {}).get("mean") is not None]
    if not ms:
        return None
    m = max(ms, key=lambda k: ch[k]["mean"])
    return m, ch[m]


class Change(TypedDict):
    """How one spec moved one forget metric against full precision, item by item (``derived["changes"]``)."""

    n: int  # items compared
    mean: float  # mean per-item change, points
    ci: list[float | None]  # its 95% paired bootstrap interval (None: not finite)
    up: int
    down: int
    ties: int
    p: float  # one-sided sign test, raw
    p_holm: float | None  # Holm-adjusted over the audit's grid


class RetainedFigure(TypedDict):
    """Knowledge retained (unlearned / original x 100, above chance) with its interval (``derived["retained_ci"]``)."""

    value: float | None
    ci: list[float | None]
    n: int
    original: float
    chance: float | None


class LargestRegain(TypedDict):
    """The largest regain of a family (``derived["max_regained_by_kind"]``)."""

    spec: str
    metric: str
    regained: float


# Keys of derived this version writes, in the order it writes them; others found in a report are kept.
DERIVED_KEYS = ("regained", "retained", "utility", "kinds", "max_regained_by_kind", "changes", "retained_ci",
                "regained_share", "stderr", "statistics", "recommendation", "auc_retrain", "auc_retrain_source",
                "retained_note", "reference_note", "forget_quality", "calibration", "calibrated_changes",
                "control_regained", "max_regained_by_kind_calibrated", "retain_effect", "retain_effect_control",
                "sequential")


@dataclass(eq=False)
class Derived(Mapping):
    """The figures an audit derives from its cells (report.json's ``derived``). Every table is keyed by spec,
    then by metric name; metric names are open (a registered metric appears under its own name).

    It is also a read-only-by-key mapping with the JSON's keys (``derived["changes"]``, ``derived.get(...)``),
    as report.json code read it before it was typed; a key absent from the JSON (an optional field that is
    None) is absent from the mapping. ``extra``: keys this version does not know, kept as they were.

    Attributes:
        regained: spec -> metric -> metric(spec) - metric(fp), points (recovery attacks: on held-out items).
        retained: spec -> metric -> unlearned / original x 100 (needs the original model).
        utility: spec -> KnowMem retain of the audited model.
        kinds: spec -> family of its attack, ``quantization`` or ``recovery`` (the key predates the
            kind/family distinction: see :mod:`hubaudit.attacks.base`).
        max_regained_by_kind: family -> the largest regain of a verdict metric in it.
        changes: spec -> verdict metric -> :class:`Change`.
        retained_ci: spec -> metric -> :class:`RetainedFigure`.
        regained_share: spec -> metric -> regain as a share (%) of what was forgotten, or None.
        stderr: role -> spec -> metric -> standard error of the mean over items.
        statistics: how the figures were tested (alpha, tests, correction, test, interval, rules).
        recommendation: what to do next (for ``fragile``): ``{action, why, settings}``.
        auc_retrain / auc_retrain_source: PrivLeak's baseline AUC and where it came from.
        retained_note / reference_note: why retained is missing; which reference was used and why.
        forget_quality: TOFU: spec -> KS-test p-value of truth ratios against the retrain model.
        calibration: whether each attack was measured against a control model (:mod:`hubaudit.calibrate`).
        calibrated_changes / control_regained / max_regained_by_kind_calibrated: with a control, the changes
            calibrated on it, the control's own mean changes, and the largest calibrated regain per family.
        retain_effect / retain_effect_control: training attacks: the change of the retain metrics (model, control).
        sequential: a ``--sequential`` audit's decisions per pair (:mod:`hubaudit.seqaudit`).
    """

    regained: dict[str, dict[str, float]] = field(default_factory=dict)
    retained: dict[str, dict[str, float]] = field(default_factory=dict)
    utility: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    max_regained_by_kind: dict[str, LargestRegain] = field(default_factory=dict)
    changes: dict[str, dict[str, Change]] = field(default_factory=dict)
    retained_ci: dict[str, dict[str, RetainedFigure]] = field(default_factory=dict)
    regained_share: dict[str, dict[str, float | None]] = field(default_factory=dict)
    stderr: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    recommendation: dict[str, Any] | None = None
    auc_retrain: float | None = None
    auc_retrain_source: str | None = None
    retained_note: str | None = None
    reference_note: str | None = None
    forget_quality: dict[str, float] | None = None
    calibration: dict[str, Any] | None = None
    calibrated_changes: dict[str, dict[str, dict[str, Any]]] | None = None
    control_regained: dict[str, dict[str, float]] | None = None
    max_regained_by_kind_calibrated: dict[str, LargestRegain] | None = None
    retain_effect: dict[str, dict[str, Change]] | None = None
    retain_effect_control: dict[str, dict[str, Change]] | None = None
    sequential: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``derived`` as report.json holds it: every table, the optional fields that are set, then ``extra``."""
        out = {k: getattr(self, k) for k in DERIVED_KEYS if getattr(self, k) is not None}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Derived":
        """From report.json's ``derived`` (any readable version: tables it lacks are empty)."""
        if isinstance(d, Derived):
            return d
        d = dict(d or {})
        return cls(**{k: d.pop(k) for k in DERIVED_KEYS if k in d}, extra=d)

    # the mapping of the JSON's keys
    def __getitem__(self, key: str) -> Any:
        if key in DERIVED_KEYS:
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in DERIVED_KEYS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __repr__(self) -> str:
        return f"Derived({self.to_dict()!r})"


@dataclass
class AuditReport:
    """Everything an audit found. ``to_json``/``from_json`` round-trip; ``schema_version`` guards."""

    inputs: dict[str, Any]
    cells: list[CellResult]
    derived: Derived
    verdict: Verdict
    schema_version: int = SCHEMA_VERSION
    hubaudit_version: str = ""
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.derived, Derived):  # a dict (verdict.derive builds one): typed here
            self.derived = Derived.from_dict(self.derived)
        if isinstance(self.verdict, Mapping):
            self.verdict = Verdict.from_dict(self.verdict)

    def cell(self, role: str, spec: str) -> CellResult | None:
        return next((c for c in self.cells if c.role == role and c.spec == spec), None)

    @property
    def specs(self) -> list[str]:
        return list(self.inputs.get("specs", []))

    def to_json(self, items: bool = True) -> dict:
        """report.json's content (``items=False``: without the per-item records), valid against
        :func:`report_schema`."""
        return {"inputs": _copy(self.inputs),
                "cells": [c.to_json(items) for c in self.cells],
                "derived": _copy(self.derived.to_dict()), "verdict": self.verdict.to_dict(),
                "schema_version": self.schema_version, "hubaudit_version": self.hubaudit_version,
                "created": self.created, "timings": dict(self.timings)}

    @classmethod
    def from_json(cls, d: dict) -> "AuditReport":
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"report schema version {version} is not one of {READABLE_VERSIONS}; read it with a "
                             "matching hubaudit")
        d = dict(d)
        d["cells"] = [CellResult.from_json(c) for c in d["cells"]]
        d["verdict"] = Verdict.from_dict(d["verdict"])
        d["derived"] = Derived.from_dict(d.get("derived"))
        return cls(**d)


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like data (as :func:`dataclasses.asdict` made before)."""
    import copy

    return copy.deepcopy(value)


def report_schema() -> dict:
    """The JSON Schema (draft 2020-12) of report.json, whose ``version`` is :data:`SCHEMA_VERSION`."""
    return json.loads((SCHEMA_DIR / "report.schema.json").read_text(encoding="utf-8"))


def leaderboard_schema() -> dict:
    """The JSON Schema (draft 2020-12) of one leaderboard row (leaderboard.parquet / .md's columns)."""
    return json.loads((SCHEMA_DIR / "leaderboard.schema.json").read_text(encoding="utf-8"))
