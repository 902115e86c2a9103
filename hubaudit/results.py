"""The values an audit produces, with JSON in and out (``SCHEMA_VERSION``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# Which metrics the verdict counts (memorization of the forget set, ROUGE-L F1 x 100).
VERDICT_METRICS = ("verbmem_f", "knowmem_f", "tofu_rouge_f", "wmdp_acc")  # all on a 0-100 scale
LABELS = {
    "tofu_rouge_f": "TOFU ROUGE-L forget",
    "tofu_prob_f": "TOFU answer prob. forget",
    "tofu_tr_f": "TOFU truth ratio forget",
    "tofu_rouge_r": "TOFU ROUGE-L retain",
    "tofu_prob_r": "TOFU answer prob. retain",
    "tofu_tr_r": "TOFU truth ratio retain",
    "wmdp_acc": "WMDP accuracy",
    "mmlu_acc": "MMLU accuracy",
    "verbmem_f": "VerbMem forget",
    "knowmem_f": "KnowMem forget",
    "knowmem_r": "KnowMem retain",
    "mia_auc": "MIA AUC",
    "privleak": "PrivLeak",
}


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


@dataclass
class Verdict:
    """``fragile`` when some spec brings back at least ``threshold`` points of a forget metric;
    ``robust`` when none does; ``incomplete`` when no quantized cell could be evaluated."""

    label: str
    threshold: float
    worst_spec: str | None = None
    worst_metric: str | None = None
    max_regained: float | None = None
    summary: str = ""


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
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema version {version} is not {SCHEMA_VERSION}; read it with a matching hubaudit")
        d = dict(d)
        d["cells"] = [CellResult.from_json(c) for c in d["cells"]]
        d["verdict"] = Verdict(**d["verdict"])
        return cls(**d)
