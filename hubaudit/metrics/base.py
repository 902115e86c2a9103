"""What a metric is: a name, the scores it produces (:class:`~hubaudit.metrics.scores.Score`, their facts), the
forget-set parts it needs, a version."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import MetricError
from ..registry import Registry
from .scores import Score, register_scores, unregister_scores

if TYPE_CHECKING:  # pragma: no cover
    from ..forget import ForgetSet
    from .runner import LMRunner


@dataclass
class MetricResult:
    """One metric on one model.

    Attributes:
        value: the aggregate (ROUGE-L F1 x 100 for the memorization metrics, MIA AUC for ``mia``).
        n: number of items scored.
        items: per-item records (score, and the model's output where there is one).
        seconds: wall time of this metric.
        tokens: tokens processed (prompt tokens once, generated tokens once).
        decoding: for a metric that generates text, how: ``{"path": "fast"}`` (hubaudit's greedy loop)
            or ``{"path": "generate", "reason": ...}`` (batched ``model.generate``); None otherwise.
    """

    value: float
    n: int
    items: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    decoding: dict[str, str] | None = None


class Metric:
    """Base class. Subclasses set the attributes and implement :meth:`compute`.

    Attributes:
        name: registry key, and the key of its main score ("knowmem_f").
        scores: the scores it produces, each with its facts (:class:`~hubaudit.metrics.scores.Score`): label,
            scale, direction, chance, whether the verdict counts it, where it is shown. The first is the one
            :meth:`compute` returns as ``value``; a ``derived`` score is computed by the audit.
        label: human name in messages (default: the first score's label).
        needs: forget-set parts that must be present and non-empty.
        uses: parts used when present (in-context examples, MIA retain texts).
        version: bump when the definition changes; part of the results-store key.
    """

    name = ""
    label = ""
    scores: tuple[Score, ...] = ()
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    version = "1"

    def settings(self, cfg: "MetricConfig") -> dict:
        """The settings this metric's value depends on (for the store key and the report)."""
        return {}

    def prompt_key(self, cfg: "MetricConfig", tokenizer) -> dict:
        """What shapes this metric's prompts for this tokenizer (for the store key): {} when nothing but
        :meth:`settings` does."""
        return {}

    def compute(self, runner: "LMRunner", fs: "ForgetSet", cfg: "MetricConfig", progress=None) -> MetricResult:
        raise NotImplementedError


@dataclass(frozen=True)
class MetricConfig:
    """Settings shared by the metrics (MUSE defaults)."""

    verbmem_max_new_tokens: int = 128
    knowmem_max_new_tokens: int = 32
    mink_k: float = 0.4
    stop_strings: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
    # TOFU-style metrics build prompts with the tokenizer's chat template when it has one (MUSE's and
    # the WMDP/MMLU metrics never do, as their benchmarks' own evaluations do not); --no-chat-template
    chat_template: bool = True
    # TOFU prompts as open-unlearning builds them (metrics/prompts.py): the system turn, the date a
    # Llama-3.x template prints ("" = none / the template's own, which is today's), and the prompt of a
    # model without a template ("auto": [INST] for Llama-2-style tokenizers, else Question/Answer)
    system_prompt: str = "You are a helpful assistant."
    date_string: str = "10 Apr 2025"
    plain_prompt: str = "auto"
    # WMDP/MMLU: BOS before the prompt. None = lm-evaluation-harness 0.4.8's default (open-unlearning's pin,
    # the WMDP paper's runs): none, except for Gemma models, which the harness gives one
    mcq_bos: bool | None = None

    def __post_init__(self):
        if not 0 < self.mink_k <= 1:
            raise MetricError(f"Min-K% needs 0 < k <= 1, got {self.mink_k}")
        if self.verbmem_max_new_tokens < 1 or self.knowmem_max_new_tokens < 1:
            raise MetricError("max_new_tokens must be at least 1")


METRICS: Registry[type[Metric]] = Registry("metric", MetricError)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: register a metric and its scores (a score's ``part`` defaults to the metric's first
    needed part; its label becomes the metric's when the metric names none)."""
    if not cls.scores or cls.scores[0].key != cls.name:
        raise ValueError(f"metric {cls.name!r}: declare its scores, the first one keyed {cls.name!r}")
    cls.scores = tuple(s if s.part or not cls.needs else replace(s, part=cls.needs[0]) for s in cls.scores)
    if not cls.__dict__.get("label"):
        cls.label = cls.scores[0].label
    METRICS.add(cls.name, cls)
    try:
        register_scores(cls.name, cls.scores)
    except ValueError:
        METRICS.remove(cls.name)
        raise
    return cls


def unregister_metric(name: str) -> None:
    """Take a metric and its scores out of the registries (a test that registered one of its own)."""
    METRICS.remove(name)
    unregister_scores(name)
