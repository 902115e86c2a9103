"""The values an audit produces, with JSON in and out (``SCHEMA_VERSION``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 2: the verdict's uncertainty (interval, p-values, items) and derived["changes"]
READABLE_VERSIONS = (1, 2)  # version 1 reports load with the new verdict fields empty

# What each metric is (label, scale, whether the verdict counts it, ...): hubaudit.metrics.scores.


@dataclass
class CellResult:
    """One model at one precision.

    Attributes:
        role: ``model`` (the audited model), ``reference`` (the original) or ``retrain``.
        spec: ``fp`` (as stored, full precision) or a quantization spec (``rtn:4``).
        status: ``ok``, ``skipped`` (backend unavailable here; ``reason`` says why) or ``error``.
        metrics: metric name -> value (ROUGE-L F1 x 100; ``mia_auc`` in 0..1; ``privleak`` in %).
        n_items: metric name -> items scored.
        seconds: wall time spent on this cell in the run that computed it (quantizing + metrics).
        peak_rss_bytes / peak_cuda_bytes: peak memory while the cell was computed.
        backend: what the backend did (its settings and library versions).
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
    backend: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    reused: bool = False
    items: dict[str, list] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "CellResult":
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


@dataclass
class AuditReport:
    """Everything an audit found. ``to_json``/``from_json`` round-trip; ``schema_version`` guards."""

    inputs: dict[str, Any]
    cells: list[CellResult]
    derived: dict[str, Any]
    verdict: Verdict
    schema_version: int = SCHEMA_VERSION
    hubaudit_version: str = ""
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def cell(self, role: str, spec: str) -> CellResult | None:
        return next((c for c in self.cells if c.role == role and c.spec == spec), None)

    @property
    def specs(self) -> list[str]:
        return list(self.inputs.get("specs", []))

    def to_json(self, items: bool = True) -> dict:
        d = asdict(self)
        if not items:
            for c in d["cells"]:
                c.pop("items", None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "AuditReport":
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"report schema version {version} is not one of {READABLE_VERSIONS}; read it with a "
                             "matching hubaudit")
        d = dict(d)
        d["cells"] = [CellResult.from_json(c) for c in d["cells"]]
        d["verdict"] = Verdict(**d["verdict"])
        return cls(**d)
